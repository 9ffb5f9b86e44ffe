"""Which labels a Fisher's per-example gradients are taken at, eq. (K4).

Each kind yields ``(y, scale)`` pairs: the estimator backpropagates
``Σ_n scale_n · ℓ_n(y_n)`` once per pair, so that squared per-example gradients carry the
weight ``scale_n² = p(y_n | x_n)`` that the expectation over y in eq. (K3) asks for.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from kfacel.types import FisherKind


def fisher_targets(
    kind: FisherKind,
    logits: Tensor,
    labels: Tensor,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Labels and per-example gradient scales for one batch.

    Args:
        kind: empirical (gold), sampled (one draw from the softmax) or exact (every class).
        logits: ``[N, C]`` model outputs; ``-inf`` marks an invalid candidate.
        labels: ``[N]`` gold indices.
        generator: randomness for ``SAMPLED``.

    Yields:
        ``(y, scale)`` with ``y: [N]`` labels and ``scale: [N]`` or None (all ones).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [N, C] and labels [N]; got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    kind = FisherKind(kind)
    if kind is FisherKind.EMPIRICAL:
        yield labels, None
        return
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probs = F.softmax(logits.detach().to(dtype), dim=-1)  # [N, C]
    if kind is FisherKind.SAMPLED:
        device = generator.device if generator is not None else probs.device
        y = torch.multinomial(probs.to(device), 1, generator=generator).squeeze(1)
        yield y.to(logits.device), None
        return
    for c in range(logits.shape[1]):
        p = probs[:, c]  # [N]
        if torch.any(p > 0):
            y = torch.full_like(labels, c)
            yield y, p.sqrt().to(logits.dtype)  # scale² = p(c | x_n)
