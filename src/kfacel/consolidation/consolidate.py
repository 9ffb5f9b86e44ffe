"""Consolidate a finished task: estimate the curvature at the trained weights, keep it.

:func:`consolidate` is the one core of every front-end: ``kfacel consolidate`` and the
experiment cells (``kfacel.training.consolidate.consolidate_task``, batches from a
linking task) and ``kfacel.hf.consolidate`` (batches from a Trainer's dataset and
collator). It reads only the batches it is given, while the task's data is at hand, and
returns the ``TaskState`` (anchor + curvature) that ``save_state`` writes; training on
the next task then needs only the states, never the old data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kfacel.consolidation.state import (
    FACTOR_RANK,
    METHODS,
    Curvature,
    TaskState,
    curvature_to,
    snapshot,
)
from kfacel.curvature.diagonal import estimate_diagonal
from kfacel.curvature.factors import KFACFisher, compress_factors
from kfacel.curvature.kfac import estimate_kfac
from kfacel.types import ConsolidationMethod, FisherKind, KFACApprox


@dataclass(frozen=True)
class ConsolidationSettings:
    """How a finished task's curvature is estimated and kept.

    Attributes:
        method: ``kfac`` (K-FAC Fisher, eq. K5), ``ewc`` (diagonal, K7) or ``l2``
            (anchor only).
        fisher: labels of the per-example gradients: ``empirical``, ``sampled`` or
            ``exact`` (K4, K9).
        uncovered: K-FAC only: parameters outside its layers (LayerNorm) are left out
            (``ignore``, the paper) or get a diagonal Fisher (``diagonal``).
        approx: K-FAC only: ``expand`` (positions, candidates and calls as independent
            uses, the paper, K5) or ``reduce`` (aggregated per example, K8).
        factor_rank: K-FAC only: keep each Kronecker factor larger than this at its
            top eigenpairs and the mean of the rest (K10): a smaller state and a
            cheaper penalty step; None keeps them whole.
        low_rank_layers: which layers (by name) ``factor_rank`` applies to; None: all.
        seed: the labels of ``sampled``.
        progress: a progress bar.
    """

    method: str = "kfac"
    fisher: FisherKind | str = FisherKind.EMPIRICAL
    uncovered: str = "ignore"
    approx: KFACApprox | str = KFACApprox.EXPAND
    factor_rank: int | None = None
    low_rank_layers: Callable[[str], bool] | None = None
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming a method or factor rank that cannot be used."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.factor_rank is not None and (
            self.method != "kfac" or self.factor_rank < 1
        ):
            raise ValueError(
                f"factor_rank needs method 'kfac' and a rank >= 1, got "
                f"{self.method!r} and {self.factor_rank}"
            )


def consolidate(
    model: nn.Module,
    batches: Iterable[Any],
    settings: ConsolidationSettings,
    *,
    task: str,
    meta: Mapping[str, Any] | None = None,
) -> TaskState:
    """Anchor and curvature of ``model``'s trainable parameters over ``batches``.

    Args:
        model: the model trained on the task, on the device to compute on.
        batches: re-iterable ``(inputs, labels)`` pairs, as the estimators expect.
        settings: method, Fisher kind and how the curvature is kept.
        task: the task's name (kept in the state).
        meta: what the front-end records about the data (counts, seed, split).

    Returns:
        The state, every tensor on the CPU; ``meta`` records the factor rank when
        factors were kept low-rank.

    Raises:
        ValueError: no trainable parameter; the estimators' errors (tied weights,
            unsupported layers).
    """
    anchor = {k: v.cpu() for k, v in snapshot(model).items()}
    if not anchor:
        raise ValueError("the model has no trainable parameter to consolidate")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    s = settings
    curvature = estimate_curvature(
        s.method, model, batches, fisher=s.fisher, generator=generator,
        uncovered=s.uncovered, approx=s.approx, progress=s.progress,
    )  # fmt: skip
    kept = dict(meta or {})
    if isinstance(curvature, KFACFisher) and s.factor_rank is not None:
        curvature = compress_factors(curvature, s.factor_rank, s.low_rank_layers)
        kept[FACTOR_RANK] = s.factor_rank
    return TaskState(task, s.method, anchor, curvature_to(curvature, "cpu"), kept)


def estimate_curvature(
    method: str,
    model: nn.Module,
    batches: Any,
    *,
    fisher: FisherKind | str,
    generator: torch.Generator | None = None,
    uncovered: str = "ignore",
    approx: KFACApprox | str = KFACApprox.EXPAND,
    progress: bool = False,
) -> Curvature:
    """The curvature ``method`` keeps: a K-FAC or diagonal Fisher, or None for ``l2``.

    ``batches`` yields ``(inputs, labels)`` as the estimators expect; ``uncovered`` and
    ``approx`` apply to K-FAC only.
    """
    if method == ConsolidationMethod.KFAC:
        return estimate_kfac(
            model, batches, kind=fisher, generator=generator,
            uncovered=uncovered, approx=approx, progress=progress,  # type: ignore[arg-type]
        )  # fmt: skip
    if method == ConsolidationMethod.EWC:
        return estimate_diagonal(
            model, batches, kind=fisher, generator=generator, progress=progress
        )
    return None
