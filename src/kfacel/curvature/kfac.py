"""Kronecker-factored Fisher of a categorical predictor, eqs. (K1)–(K6) and (K8).

References: Martens & Grosse 2015, "Optimizing neural networks with Kronecker-factored
approximate curvature", ICML; Grosse & Martens 2016, ICML (convolutions); Eschenhagen et
al. 2023, "Kronecker-factored approximate curvature for modern neural network
architectures", NeurIPS (the "expand" and "reduce" conventions for shared positions,
§3, and the exactness of each in its setting for deep linear networks); Ritter et al.
2018, NeurIPS (K-FAC Laplace for continual learning); McInerney et al. 2021 (entity
linking).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kfacel.curvature._capture import LayerRecord
from kfacel.curvature._gram import mirror_upper_
from kfacel.curvature._loop import run_batches
from kfacel.curvature._per_example import finish_diagonal
from kfacel.curvature._select import (
    Coverage,
    all_reduce_,
    coverage,
    model_dtype_device,
    param_name,
    warn_unsupported,
)
from kfacel.curvature.factors import KFACFisher, KroneckerFactors
from kfacel.curvature.layers import LayerKind, has_bias
from kfacel.types import FisherKind, KFACApprox, NonFiniteCurvatureError

Uncovered = Literal["ignore", "diagonal"]


def estimate_kfac(
    model: nn.Module,
    batches: Iterable[tuple[Any, Tensor]],
    *,
    kind: FisherKind | str = FisherKind.EMPIRICAL,
    generator: torch.Generator | None = None,
    uncovered: Uncovered = "ignore",
    approx: KFACApprox | str = KFACApprox.EXPAND,
    progress: bool = False,
) -> KFACFisher:
    """Kronecker-factored Fisher ``F_layer ≈ G ⊗ A`` of every covered layer, (K5)/(K8).

    Args:
        model: ``model(inputs)`` (``model(**inputs)`` for a mapping) returns logits
            ``[N, C]`` or ``[N, S, C]``, or an output with ``.logits`` (a Hugging Face
            ``ModelOutput``); Linear, Conv1d (plain) and Embedding layers get factors,
            called any number of times per forward. A mapping's ``attention_mask``
            marks padding (K5); tied weights are refused.
        batches: yields ``(inputs, labels)`` with ``labels: [N]`` or ``[N, S]`` gold
            indices, ``-100`` where there is no loss term (K9).
        kind: labels of the per-example gradients (K4).
        generator: randomness for ``sampled``.
        uncovered: ``"ignore"`` (the paper) lists parameters no factor covers;
            ``"diagonal"`` also gives LayerNorm parameters a diagonal Fisher (K7).
        approx: how the uses of a layer within one example enter the factors:
            ``expand`` (K5, independent uses, the paper's assumption) or ``reduce``
            (K8, inputs averaged and output gradients summed per example; Linear and
            Conv1d only, Embeddings keep K5–K6).
        progress: show a progress bar.

    Returns:
        The factors with the Fisher kind, the approximation, the example count and
        the coverage.

    Raises:
        ValueError: no example was seen, or ``uncovered="diagonal"`` meets a module
            kfacel cannot differentiate per example.
        NonFiniteCurvatureError: a layer's statistics are not finite (named); also a
            ``ValueError``.
    """
    kind, approx = FisherKind(kind), KFACApprox(approx)
    if uncovered not in ("ignore", "diagonal"):
        raise ValueError(f"uncovered must be 'ignore' or 'diagonal', got {uncovered!r}")
    cov = coverage(model)
    warn_unsupported(cov, "estimate_kfac")
    if uncovered == "diagonal" and cov.unsupported:
        raise ValueError(f"no per-example gradients for {sorted(cov.unsupported)}")
    records = _records(cov, approx, diagonal=uncovered == "diagonal")
    dtype, device = model_dtype_device(model)
    examples, diag_sums = run_batches(
        model,
        batches,
        records,
        kind=kind,
        generator=generator,
        dtype=dtype,
        device=device,
        progress=progress,
        desc=f"K-FAC ({kind})",
    )
    uncovered_names = _uncovered_names(cov)
    fisher = _finish(records, diag_sums, examples, kind, uncovered_names, dtype, device)
    return replace(fisher, approx=approx)


def _records(cov: Any, approx: KFACApprox, *, diagonal: bool) -> dict[str, LayerRecord]:
    """One record per covered layer (K5 or K8), plus per-example ones for ``diagonal``."""
    records = {
        name: LayerRecord(
            name,
            module,
            lk,
            factors=True,
            per_example=False,
            reduce=approx is KFACApprox.REDUCE and lk is not LayerKind.EMBEDDING,
        )
        for name, (module, lk) in cov.kronecker.items()
    }
    if diagonal:
        records |= {
            name: LayerRecord(name, module, lk, factors=False, per_example=True)
            for name, (module, lk) in cov.diagonal_only.items()
        }
    return records


def _uncovered_names(cov: Coverage) -> tuple[str, ...]:
    """Trainable parameters no Kronecker factor covers (diagonal-only and unsupported)."""
    return (
        *[
            param_name(name, attr)
            for name, (module, _) in cov.diagonal_only.items()
            for attr, p in module.named_parameters(recurse=False)
            if p.requires_grad
        ],
        *cov.unsupported_params,
    )


def _finish(
    records: dict[str, LayerRecord],
    diag_sums: dict[str, Tensor],
    examples: int,
    kind: FisherKind,
    uncovered: tuple[str, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> KFACFisher:
    """Sum over ranks, normalize (K5, K8) and check the statistics."""
    kron = [r for r in records.values() if r.factors]
    for rec in kron:  # a rank that never saw a layer still takes part in all_reduce
        _zeros_if_unseen(rec, dtype, device)
    count = torch.tensor(float(examples), dtype=dtype, device=device)
    all_reduce_([count, *[t for r in kron for t in (r.aa, r.uses)]])
    all_reduce_(r.gg for r in kron)
    all_reduce_(diag_sums[k] for k in sorted(diag_sums))
    n = float(count)
    if n == 0:
        raise ValueError("estimate_kfac saw no example: the batches were empty")
    factors: dict[str, KroneckerFactors] = {}
    for rec in kron:  # every record owns its sums: each is finished once, in place
        assert rec.aa is not None and rec.uses is not None and rec.gg is not None
        A = mirror_upper_(_finish_input_factor(rec))
        G = mirror_upper_(rec.gg.div_(n))  # eqs. (K5), (K8), in place
        for what, t in (("A", A), ("G", G)):
            if not bool(torch.isfinite(t.sum())):  # NaN and inf survive a sum
                raise NonFiniteCurvatureError(
                    f"layer {rec.name!r}: the {what} factor is not finite"
                )
        bias = param_name(rec.name, "bias") if has_bias(rec.module) else None
        factors[rec.name] = KroneckerFactors(
            A, G, rec.kind, param_name(rec.name, "weight"), bias
        )
    diagonal = finish_diagonal(records, diag_sums, n)
    return KFACFisher(factors, kind, int(n), uncovered, diagonal)


def _finish_input_factor(rec: LayerRecord) -> Tensor:
    """``A = Σ ā āᵀ / Σ_n R_n`` in place, bias coordinate last, eqs. (K5)–(K6).

    Reduce (K8): ``rec.aa`` holds ``Σ_n ā_n ā_nᵀ`` and ``rec.uses`` ``N_A``.
    """
    assert rec.aa is not None and rec.uses is not None
    uses = float(rec.uses)
    if rec.kind is not LayerKind.EMBEDDING and has_bias(rec.module):
        i = rec.aa.shape[0] - 1
        rec.aa[i, :i] = rec.aa[:i, i]  # mirror Σ a into the last row
        rec.aa[i, i] = uses
    if uses > 0:
        rec.aa.div_(uses)
    return rec.aa


def _zeros_if_unseen(
    rec: LayerRecord, dtype: torch.dtype, device: torch.device
) -> None:
    module = rec.module
    if rec.aa is None:
        if rec.kind is LayerKind.EMBEDDING:
            assert isinstance(module, nn.Embedding)
            rec.aa = torch.zeros(module.num_embeddings, dtype=dtype, device=device)
        else:
            d_in = _weight(module)[0].numel() + (1 if has_bias(module) else 0)
            rec.aa = torch.zeros(d_in, d_in, dtype=dtype, device=device)
        rec.uses = torch.zeros((), dtype=dtype, device=device)
    if rec.gg is None:
        weight = _weight(module)
        d_out = weight.shape[1] if rec.kind is LayerKind.EMBEDDING else weight.shape[0]
        rec.gg = torch.zeros(d_out, d_out, dtype=dtype, device=device)


def _weight(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight
