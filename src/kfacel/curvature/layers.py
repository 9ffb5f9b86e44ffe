"""Layer adapters: how each supported module type is a linear map, eq. (K1).

For every supported module an adapter gives (a) the positions of one call (the shape
that a ``kfacel.positions`` mask must have), (b) the layer inputs as rows ``[P, D_in]`` for
the input factor, (c) the output gradient as rows ``[P, D_out]``, and (d) the per-example
gradient of its parameters, for the diagonal Fisher (K7). Folding ``[W | b]`` and
unfolding a gradient back to ``weight``/``bias`` works on plain tensors, so penalties use it
without the module.

References: Martens & Grosse 2015 (ICML) for Linear; Grosse & Martens 2016 (ICML), eq. 5,
for convolutions as Linear on unfolded patches.
"""

from __future__ import annotations

from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kfacel.curvature._gram import add_upper_gram_


class LayerKind(StrEnum):
    """Module types with Kronecker factors (K1) or a per-example diagonal (K7)."""

    LINEAR = "linear"
    CONV1D = "conv1d"
    EMBEDDING = "embedding"
    LAYERNORM = "layernorm"  # diagonal only: not a linear map of its input


KRONECKER_KINDS = (LayerKind.LINEAR, LayerKind.CONV1D, LayerKind.EMBEDDING)


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The adapter kind for ``module``, or None when kfacel has none for it."""
    if type(module) is nn.Linear or isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    if isinstance(module, nn.Conv1d):
        plain = (
            module.groups == 1
            and module.dilation == (1,)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
        return LayerKind.CONV1D if plain else None
    if isinstance(module, nn.Embedding):
        plain = module.max_norm is None and not module.sparse
        return LayerKind.EMBEDDING if plain else None
    if isinstance(module, nn.LayerNorm):
        return LayerKind.LAYERNORM
    return None


def unsupported_reason(module: nn.Module) -> str:
    """Why ``module`` has no adapter (for error messages)."""
    if isinstance(module, nn.Conv1d):
        return "Conv1d with groups, dilation, string padding or non-zero padding mode"
    if isinstance(module, nn.Embedding):
        return "Embedding with max_norm or sparse gradients"
    return f"no adapter for {type(module).__name__}"


# ----------------------------------------------------------------------------- calls


def positions_shape(kind: LayerKind, module: nn.Module, x: Tensor) -> tuple[int, ...]:
    """Shape of the positions of one call with input ``x`` (what a mask must match)."""
    if kind is LayerKind.LINEAR:
        return tuple(x.shape[:-1])
    if kind is LayerKind.CONV1D:
        assert isinstance(module, nn.Conv1d)
        k, stride, pad = _conv_geometry(module)
        length = (x.shape[-1] + 2 * pad - k) // stride + 1
        return (x.shape[0], length) if x.ndim == 3 else (length,)
    if kind is LayerKind.EMBEDDING:
        return tuple(x.shape)
    assert isinstance(module, nn.LayerNorm)
    return tuple(x.shape[: x.ndim - len(module.normalized_shape)])


def input_rows(kind: LayerKind, module: nn.Module, x: Tensor) -> Tensor:
    """Layer inputs as rows, one per position: ``[P, D_in]`` (no bias column).

    Linear: the input vectors. Conv1d: unfolded patches with index ``c_in * k + t``,
    the order of ``weight.reshape(c_out, -1)``. Embedding: the token ids ``[P]``.
    LayerNorm: the normalized input ``x̂`` (what its weight multiplies).
    """
    if kind is LayerKind.LINEAR:
        return x.reshape(-1, x.shape[-1])
    if kind is LayerKind.CONV1D:
        assert isinstance(module, nn.Conv1d)
        k, stride, pad = _conv_geometry(module)
        x3 = x if x.ndim == 3 else x.unsqueeze(0)
        patches = F.pad(x3, (pad, pad)).unfold(2, k, stride)  # [N, c_in, L_out, k]
        patches = patches.permute(0, 2, 1, 3)  # [N, L_out, c_in, k]
        return patches.reshape(-1, x3.shape[1] * k)  # [N * L_out, c_in * k]
    if kind is LayerKind.EMBEDDING:
        return x.reshape(-1)
    assert isinstance(module, nn.LayerNorm)
    xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    return xhat.reshape(-1, *module.normalized_shape).flatten(1)


def input_statistic(
    kind: LayerKind, module: nn.Module, rows: Tensor, dtype: torch.dtype
) -> Tensor:
    """``Σ_r ā_r ā_rᵀ`` of real input rows in the layout of ``A``, eqs. (K5)–(K6).

    Args:
        kind: the layer kind (not LayerNorm).
        module: the layer.
        rows: ``[P, D_in]`` real input rows (Embedding: token ids ``[P]``).
        dtype: dtype of the statistic.

    Returns:
        Embedding: token counts ``[V]``. Otherwise ``[i, i]`` holding ``Σ a aᵀ`` on and
        above the diagonal (below it: partial sums, :mod:`kfacel.curvature._gram`), and
        with a bias ``[i + 1, i + 1]`` whose last column holds ``Σ a`` above the diagonal
        (the lower triangle, last row and corner are filled when the factor is finished).

    >>> import torch
    >>> rows = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> input_statistic(LayerKind.LINEAR, nn.Linear(2, 1), rows, torch.float64)
    tensor([[10., 14.,  4.],
            [14., 20.,  6.],
            [ 0.,  0.,  0.]], dtype=torch.float64)
    """
    if kind is LayerKind.EMBEDDING:
        assert isinstance(module, nn.Embedding)
        counts = torch.bincount(rows, minlength=module.num_embeddings)
        return counts.to(dtype)  # token counts  [V], eq. (K6)
    a = rows.to(dtype)  # [P, i]
    i = a.shape[1]
    size = i + 1 if has_bias(module) else i
    stat = a.new_zeros(size, size)
    add_upper_gram_(stat[:i, :i], a)  # Σ_r a aᵀ, eq. (K5), no [i, i] temporary
    if size > i:
        stat[:i, i] = a.sum(0)  # Σ a (mirrored into the last row when finished)
    return stat


def statistic_signature(kind: LayerKind, module: nn.Module) -> tuple[int, ...]:
    """What, besides the input, decides :func:`input_statistic` of a layer.

    Two layers with equal kinds and signatures that read the same input with the same
    mask have equal statistics, so it is computed once for both.
    """
    if kind is LayerKind.EMBEDDING:
        assert isinstance(module, nn.Embedding)
        return (module.num_embeddings,)
    if kind is LayerKind.CONV1D:
        assert isinstance(module, nn.Conv1d)
        return (*_conv_geometry(module), int(has_bias(module)))
    return (int(has_bias(module)),)


def _conv_geometry(module: nn.Conv1d) -> tuple[int, int, int]:
    """Kernel width, stride and (numeric, symmetric) zero padding of a Conv1d."""
    (k,), (stride,) = module.kernel_size, module.stride
    padding = module.padding
    assert not isinstance(padding, str), "string padding has no adapter"
    return int(k), int(stride), int(padding[0])


def output_rows(kind: LayerKind, module: nn.Module, g: Tensor) -> Tensor:
    """Output gradients as rows ``[P, D_out]`` in the order of :func:`input_rows`."""
    if kind is LayerKind.CONV1D:
        g3 = g if g.ndim == 3 else g.unsqueeze(0)
        return g3.transpose(1, 2).reshape(-1, g3.shape[1])  # [N * L_out, c_out]
    if kind is LayerKind.LAYERNORM:
        assert isinstance(module, nn.LayerNorm)
        return g.reshape(-1, *module.normalized_shape).flatten(1)
    return g.reshape(-1, g.shape[-1])


def has_bias(module: nn.Module) -> bool:
    """Whether the module has a bias parameter."""
    return getattr(module, "bias", None) is not None


# ------------------------------------------------------------------ folding [W | b]


def fold(kind: LayerKind, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``W~ = [W | b]: [d_out, d_in (+1)]`` from a layer's parameters, eq. (K1)."""
    if kind is LayerKind.EMBEDDING:
        return weight.T  # [d, V]
    w = weight.reshape(weight.shape[0], -1)  # Conv1d: [c_out, c_in * k]
    return w if bias is None else torch.cat([w, bias.unsqueeze(1)], dim=1)


def unfold(
    kind: LayerKind, folded: Tensor, weight_shape: torch.Size, with_bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Inverse of :func:`fold`: ``(weight, bias)`` shaped like the parameters."""
    if kind is LayerKind.EMBEDDING:
        return folded.T, None
    if with_bias:
        return folded[:, :-1].reshape(weight_shape), folded[:, -1]
    return folded.reshape(weight_shape), None
