"""Per-example gradients of captured layers, squared and summed: the diagonal Fisher (K7).

The per-example gradient of a layer is the sum over its uses (positions, repeated calls)
of ``g āᵀ``, eq. (K2); it is formed from the captured inputs and output gradients of one
batch, vectorized over examples in cache-sized blocks, squared and summed. No squared
mini-batch gradient is ever used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kfacel.curvature._capture import Call, LayerRecord
from kfacel.curvature._select import param_name
from kfacel.curvature.layers import LayerKind
from kfacel.types import NonFiniteCurvatureError

_CHUNK_ELEMENTS = (
    1 << 21
)  # a [n, o, i] block of per-example gradients: ~8 MB, cache-sized


def accumulate_squared_grads(
    records: dict[str, LayerRecord], sums: dict[str, Tensor]
) -> None:
    """Add ``Σ_n (∇_n θ)²`` of the last backward pass to ``sums`` (per parameter name)."""
    for rec in records.values():
        calls = [c for c in rec.calls if c.grads is not None]
        if not rec.per_example or not calls:
            continue
        for attr, sq in _squared_per_example(rec, calls).items():
            key = param_name(rec.name, attr)
            sums[key] = sq if key not in sums else sums[key].add_(sq)


def finish_diagonal(
    records: dict[str, LayerRecord], sums: dict[str, Tensor], examples: float
) -> dict[str, Tensor]:
    """Divide by the example count and check finiteness, eq. (K7)."""
    out: dict[str, Tensor] = {}
    for rec in records.values():
        if not rec.per_example:
            continue
        for attr, p in rec.module.named_parameters(recurse=False):
            key = param_name(rec.name, attr)
            diag = sums[key] / examples if key in sums else torch.zeros_like(p)
            if not bool(torch.isfinite(diag.sum())):  # NaN and inf survive a sum
                raise NonFiniteCurvatureError(
                    f"parameter {key!r}: the diagonal Fisher is not finite"
                )
            out[key] = diag.reshape(p.shape)
    return out


def _squared_per_example(rec: LayerRecord, calls: list[Call]) -> dict[str, Tensor]:
    """``Σ_n (per-example gradient)²`` of one layer, summed over its calls first (K2)."""
    if rec.kind is LayerKind.EMBEDDING:
        assert isinstance(rec.module, nn.Embedding)
        return {"weight": _embedding_sq(calls, rec.module.num_embeddings)}
    if rec.kind is LayerKind.LAYERNORM:
        w: Tensor | float = 0.0
        b: Tensor | float = 0.0
        for c in calls:
            assert c.grads is not None and c.rows is not None
            w = w + (c.grads * c.rows).sum(1)  # Σ_r g ⊙ x̂ per example  [N, D]
            b = b + c.grads.sum(1)  # Σ_r g per example  [N, D]
        assert isinstance(w, Tensor) and isinstance(b, Tensor)
        out = {"weight": (w**2).sum(0)}
        if rec.module.bias is not None:
            out["bias"] = (b**2).sum(0)
        return out
    return _linear_sq(calls, rec.module.bias is not None)


def _linear_sq(calls: list[Call], with_bias: bool) -> dict[str, Tensor]:
    """Linear/Conv1d: ``Σ_n (Σ_r g_r a_rᵀ)²`` and ``Σ_n (Σ_r g_r)²``, eq. (K7)."""
    g0, a0 = calls[0].grads, calls[0].rows
    assert g0 is not None and a0 is not None
    if len(calls) == 1 and g0.shape[1] == 1:  # one use per example: g² a² exactly
        g, a = g0[:, 0], a0[:, 0]  # [N, o], [N, i]
        out = {"weight": torch.einsum("no,ni->oi", g**2, a**2)}
        if with_bias:
            out["bias"] = (g**2).sum(0)
        return out
    n, o, i = g0.shape[0], g0.shape[2], a0.shape[2]
    weight = g0.new_zeros(o, i)
    bias = g0.new_zeros(o)
    step = max(1, min(n, _CHUNK_ELEMENTS // (o * i)))
    block = g0.new_empty(step, o, i)  # per-example gradients of one chunk
    for lo in range(0, n, step):
        per_w = block[: min(step, n - lo)]
        per_b = g0.new_zeros(per_w.shape[0], o)
        for j, c in enumerate(calls):
            assert c.grads is not None and c.rows is not None
            g = c.grads[lo : lo + step]  # [n, k, o]
            a = c.rows[lo : lo + step].to(g.dtype)  # [n, k, i]
            if j == 0:
                torch.bmm(g.transpose(1, 2), a, out=per_w)  # Σ_r g aᵀ per example
            else:
                per_w.baddbmm_(g.transpose(1, 2), a)
            per_b += g.sum(1)
        weight += per_w.mul_(per_w).sum(0)  # Σ_n (Σ_r g aᵀ)², squared in place
        bias += (per_b**2).sum(0)
    return {"weight": weight, "bias": bias} if with_bias else {"weight": weight}


def _embedding_sq(calls: list[Call], vocab: int) -> Tensor:
    """Embedding ``[V, d]``: per example, the rows of its tokens sum their gradients."""
    keys, grads = [], []
    for c in calls:
        assert c.grads is not None and c.rows is not None
        n, _, d = c.grads.shape
        ex = torch.arange(n, device=c.rows.device).unsqueeze(1)  # [N, 1]
        keys.append((ex * vocab + c.rows).reshape(-1))  # example-token key  [N k]
        grads.append(c.grads.reshape(-1, d))
    key = torch.cat(keys)
    g = torch.cat(grads)
    unique, inverse = torch.unique(key, return_inverse=True)
    per = g.new_zeros(unique.shape[0], g.shape[1]).index_add_(0, inverse, g)  # Σ_r g
    return g.new_zeros(vocab, g.shape[1]).index_add_(0, unique % vocab, per**2)
