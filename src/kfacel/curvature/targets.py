"""Which labels a Fisher's per-example gradients are taken at, eqs. (K4) and (K9).

Each kind yields ``(y, scale)`` pairs: the estimator backpropagates
``Σ_n Σ_s scale_{n,s} · ℓ_{n,s}(y_{n,s})`` once per pair, so that squared per-example
gradients carry the weight ``scale² = p(y | x_n)`` that the expectation over y in eq.
(K3) asks for. Labels equal to :data:`IGNORE` (-100, the Hugging Face convention) are
no loss term (K9).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from kfacel.types import FisherKind

IGNORE = -100
"""A label that is no loss term (padding, sub-word continuations, unmasked tokens)."""


def fisher_targets(
    kind: FisherKind,
    logits: Tensor,
    labels: Tensor,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Labels and per-term gradient scales for one batch.

    Args:
        kind: empirical (gold), sampled (one draw from the softmax per term) or exact
            (every class of every term, one term at a time, eq. K9).
        logits: ``[N, C]`` or ``[N, S, C]`` model outputs; ``-inf`` marks an invalid
            candidate.
        labels: ``[N]`` or ``[N, S]`` gold indices, ``-100`` where there is no term.
        generator: randomness for ``SAMPLED``.

    Yields:
        ``(y, scale)`` with ``y`` shaped like ``labels`` and ``scale`` like it or None
        (all ones).
    """
    if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"logits must be [N, C] or [N, S, C] and labels [N] or [N, S]; got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    kind = FisherKind(kind)
    if kind is FisherKind.EMPIRICAL:
        yield labels, None
        return
    real = labels != IGNORE  # [N] or [N, S]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probs = F.softmax(logits.detach().to(dtype), dim=-1)  # [N, (S,) C]
    if kind is FisherKind.SAMPLED:
        device = generator.device if generator is not None else probs.device
        flat = probs.reshape(-1, probs.shape[-1]).to(device)  # [N S, C]
        y = torch.multinomial(flat, 1, generator=generator).reshape(labels.shape)
        yield y.to(labels.device).masked_fill(~real, IGNORE), None
        return
    yield from _exact_targets(probs, real, logits.dtype)


def _exact_targets(
    probs: Tensor, real: Tensor, dtype: torch.dtype
) -> Iterator[tuple[Tensor, Tensor]]:
    """Every class ``c`` of every term position ``s``, weight ``p_{n,s}(c)``, eq. (K9).

    One term position at a time: the true Fisher of several terms is the sum of the
    terms' own Fishers (their cross terms vanish in expectation), which one backward
    pass over all terms at once would not give.
    """
    flat_p = probs.reshape(probs.shape[0], -1, probs.shape[-1])  # [N, T, C]
    flat_real = real.reshape(real.shape[0], -1)  # [N, T]
    for s in range(flat_p.shape[1]):
        here = torch.zeros_like(flat_real)
        here[:, s] = flat_real[:, s]  # only term position s of each example
        if not bool(here.any()):
            continue
        for c in range(flat_p.shape[2]):
            p = flat_p[:, s, c] * here[:, s]  # [N]
            if not bool(torch.any(p > 0)):
                continue
            y = torch.full_like(flat_real, c, dtype=torch.long).masked_fill(
                ~here, IGNORE
            )  # [N, T]
            scale = torch.zeros_like(flat_p[..., 0])
            scale[:, s] = p.sqrt()  # scale² = p(c | x_n) at term s
            yield y.reshape(real.shape), scale.reshape(real.shape).to(dtype)
