"""Diagonal Fisher from exact per-example gradients, eq. (K7).

Reference: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural
networks", PNAS (diagonal EWC).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.curvature._capture import LayerRecord
from kfacel.curvature._loop import run_batches
from kfacel.curvature._per_example import finish_diagonal
from kfacel.curvature._select import (
    all_reduce_,
    coverage,
    model_dtype_device,
    param_name,
)
from kfacel.curvature.factors import DiagonalFisher
from kfacel.types import FisherKind


def estimate_diagonal(
    model: nn.Module,
    batches: Iterable[tuple[Any, Tensor]],
    *,
    kind: FisherKind | str = FisherKind.EMPIRICAL,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> DiagonalFisher:
    """Diagonal Fisher ``F_jj = 1/N Σ_n E_y[(∇_n θ)_j²]`` of every trainable parameter (K7).

    Args:
        model: ``model(inputs)`` (``model(**inputs)`` for a mapping) returns logits
            ``[N, C]`` or ``[N, S, C]``, or an output with ``.logits``; its trainable
            parameters must sit in Linear, Conv1d, Embedding or LayerNorm modules, each
            owned by one module (tied weights are refused).
        batches: yields ``(inputs, labels)``, labels ``[N]`` or ``[N, S]`` with
            ``-100`` where there is no loss term (K9).
        kind: labels of the per-example gradients (K4).
        generator: randomness for ``sampled``.
        progress: show a progress bar.

    Raises:
        ValueError: a trainable module has no per-example rule (named), or no example
            was seen.
        NonFiniteCurvatureError: a diagonal is not finite (named); also a ``ValueError``.
    """
    kind = FisherKind(kind)
    cov = coverage(model)
    if cov.unsupported:
        listed = "; ".join(f"{n} ({r})" for n, r in cov.unsupported.items())
        raise ValueError(f"estimate_diagonal: no per-example gradients for {listed}")
    records = {
        name: LayerRecord(name, module, lk, factors=False, per_example=True)
        for name, (module, lk) in (cov.kronecker | cov.diagonal_only).items()
    }
    dtype, device = model_dtype_device(model)
    examples, sums = run_batches(
        model,
        batches,
        records,
        kind=kind,
        generator=generator,
        dtype=dtype,
        device=device,
        progress=progress,
        desc=f"diagonal ({kind})",
    )
    for rec in records.values():  # every rank reduces the same keys
        for attr, p in rec.module.named_parameters(recurse=False):
            sums.setdefault(
                param_name(rec.name, attr), torch.zeros_like(p, dtype=dtype)
            )
    count = torch.tensor(float(examples), dtype=dtype, device=device)
    all_reduce_([count, *(sums[k] for k in sorted(sums))])
    if float(count) == 0:
        raise ValueError("estimate_diagonal saw no example: the batches were empty")
    return DiagonalFisher(
        finish_diagonal(records, sums, float(count)), kind, int(count)
    )
