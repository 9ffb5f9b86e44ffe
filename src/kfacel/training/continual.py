"""Update a linker on a new task while protecting its consolidated tasks.

The one way kfacel updates a model (``kfacel train --init``, the experiment cells of
tiers 2 and 3, the quickstart): the penalty of eq. (P1) is built from the consolidation
states alone (``kfacel.penalties.make.make_penalty``; one term per finished task, each
with the strength that ``kfacel.penalties.strength`` decides), optionally with
discriminative learning rates (LRC, ``training.lrc``) and experience replay, and the
linker is trained on the new task. No old data is read, except by replay, which is a
reference method. ``save_linker(..., states=...)`` then carries the states forward with
the new weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kfacel.consolidation import TaskState
from kfacel.data.records import LinkingExample
from kfacel.linking.linker import Linker
from kfacel.penalties.base import Penalty
from kfacel.penalties.budget import BudgetPenalty
from kfacel.penalties.make import make_penalty
from kfacel.penalties.olora import OrthogonalSubspaces, start_new_adapter
from kfacel.penalties.strength import (
    TOLERANCE_GRID,
    Damping,
    Strength,
    check_tolerance,
)
from kfacel.tasks.directory import Task
from kfacel.training.fit import fit_task
from kfacel.training.ilora import (
    DEFAULT_ILORA_CONSISTENCY,
    DEFAULT_ILORA_EMA,
    SlowLearner,
)
from kfacel.training.lrc import discriminative_lr_groups
from kfacel.training.trainer import Replay, TrainLog, TrainSettings
from kfacel.types import PenaltyKind

PENALTIES = tuple(p.value for p in PenaltyKind)
"""Penalties an update can use: none, L2 to the anchor, diagonal EWC, KFC."""


@dataclass(frozen=True)
class ContinualSettings:
    """How an update protects the consolidated tasks.

    Attributes:
        penalty: ``none``, ``l2``, ``ewc`` or ``kfac`` (the states' method must match).
        strength: the strength rule (``kfacel.penalties.strength.Strength``); a
            ``kfac`` or ``ewc`` penalty given none gets the default budget.
        damping: δ and how it enters; None: ``Damping.default_for(penalty)``
            (``DEFAULT_KFAC_DAMPING`` factored for ``kfac``, none otherwise).
        lrc: discriminative learning rates, η_ℓ = η_{ℓ+1}·γ (None: off).
        replay: earlier tasks' queries to replay (None: off; needs old data).
        olora: O-LoRA's λ (eq. O1 of ``penalties.olora``): the ranker's LoRA
            adapters are merged into its weights and a fresh adapter trains
            orthogonal to them (None: off). Needs a LoRA ranker and no penalty. Only
            the start model's adapter is the earlier subspace: the ones before it are
            merged already, so past two tasks this is O-LoRA against the last one.
        ilora: I-LoRA (``training.ilora``): ``replay``'s queries are its memory, a
            slow learner follows the ranker by moving average and is what is kept.
            Needs ``replay`` (old data) and no penalty.
    """

    penalty: str = "none"
    strength: Strength = field(default_factory=Strength)
    damping: Damping | None = None
    lrc: float | None = None
    replay: Replay[LinkingExample] | None = None
    olora: float | None = None
    ilora: bool = False

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming a value out of its range; fill the defaults."""
        if self.penalty not in PENALTIES:
            raise ValueError(
                f"penalty must be one of {PENALTIES}, got {self.penalty!r}"
            )
        object.__setattr__(self, "strength", self.strength.for_penalty(self.penalty))
        given = self.damping or Damping.default_for(self.penalty)
        damping = Damping.default_for(self.penalty, given.delta, given.kind)
        object.__setattr__(self, "damping", damping)
        if self.lrc is not None and not 0 < self.lrc <= 1:
            raise ValueError(f"lrc must be a factor in (0, 1], got {self.lrc}")
        if self.olora is not None and not (self.olora >= 0 and self.penalty == "none"):
            raise ValueError(
                f"olora must be a λ ≥ 0 with penalty 'none', got {self.olora} with "
                f"{self.penalty!r}"
            )
        if self.ilora and (self.replay is None or self.penalty != "none"):
            raise ValueError("ilora needs replay (its memory) and penalty 'none'")

    @property
    def curvature_damping(self) -> Damping:
        """δ and how it enters the penalty (the defaults resolved)."""
        assert self.damping is not None  # filled by __post_init__
        return self.damping

    def describe(self, tasks: Sequence[str], *, tolerance: float | None = None) -> str:
        """The strength rule in effect, in one line (``kfacel train`` prints it).

        ``tolerance``: λ is searched by ``update_within_tolerance`` instead.

        >>> ContinualSettings(penalty="kfac").describe(["A", "B"])[:44]
        'protecting 2 tasks (A, B) with kfac, budget '
        >>> ContinualSettings(penalty="l2", strength=Strength(lam=10.0)).describe(["A"])
        'protecting 1 task (A) with l2, λ=10'
        """
        if self.penalty == "none":
            line = "no penalty: plain fine-tuning"
        else:
            n = len(tasks)
            strength = self.strength.describe(self.penalty, tasks, tolerance)
            line = f"protecting {n} task{'s' * (n != 1)} ({', '.join(tasks)}) with "
            line += f"{self.penalty}, {strength}"
            d = self.curvature_damping
            if self.penalty == PenaltyKind.KFAC.value:
                line += f", damping {d.kind} δ={d.delta:g}"
            elif self.penalty == PenaltyKind.EWC.value:
                line += f", damping δ={d.delta:g}"
        if self.lrc is not None:
            line += f", LRC γ={self.lrc:g}"
        if self.olora is not None:
            line += f", O-LoRA λ={self.olora:g}"
        if self.ilora and self.replay is not None:
            line += f", I-LoRA with a memory of {len(self.replay.items)} queries"
        elif self.replay is not None:
            r = self.replay
            line += f", replay of {len(r.items)} queries ({r.n} after every {r.every})"
        return line

    def to_json(self, tasks: Sequence[str]) -> dict[str, Any]:
        """What a model directory records as ``continual``."""
        d = self.curvature_damping
        out = {
            "penalty": self.penalty,
            **self.strength.to_json(self.penalty, tasks),
            "damping": d.delta,
            "damping_kind": d.kind,
            "lrc": self.lrc,
            "replay_queries": len(self.replay.items) if self.replay else 0,
        }
        if self.olora is not None:
            out["olora"] = self.olora
        if self.ilora:
            ilora = {"ema": DEFAULT_ILORA_EMA, "consistency": DEFAULT_ILORA_CONSISTENCY}
            out["ilora"] = ilora
        return out


def update_linker(
    linker: Linker,
    task: Task,
    states: Sequence[TaskState],
    settings: TrainSettings,
    continual: ContinualSettings,
    *,
    progress: bool = False,
) -> TrainLog:
    """Train ``linker`` on ``task`` with the penalty of ``states``; reads no old data.

    Args:
        linker: the model to continue from (trained on the consolidated tasks).
        task: the new task.
        states: consolidation states of the earlier tasks (``load_state``).
        settings: the training settings.
        continual: penalty, strength, damping, LRC and replay.
        progress: progress bars.

    Returns:
        The training log; ``linker.meta`` records the task in ``history`` and the
        settings under ``training`` and ``continual``.
    """
    names = [s.task for s in states]
    if continual.penalty != "none" and not states:
        raise ValueError(
            f"penalty {continual.penalty!r} needs a model with a consolidated task "
            "(run `kfacel consolidate` first)"
        )
    train = task.train[: settings.max_train] if settings.max_train else task.train
    steps = math.ceil(len(train) / settings.batch_size)  # task steps an epoch
    strengths = continual.strength.per_task(
        continual.penalty, states, len(train), steps, settings.epochs
    )
    penalty = make_penalty(
        continual.penalty, states, strengths, continual.curvature_damping
    )
    if continual.olora is not None:  # a fresh adapter, orthogonal to the start's
        penalty = OrthogonalSubspaces(start_new_adapter(linker.model), continual.olora)
    replay = continual.replay
    if continual.ilora and replay is not None:  # the memory, a batch every step
        memory = linker.batches(replay.items, settings.batch_size)
        penalty = SlowLearner(linker.model, memory, seed=settings.seed)
        replay = None
    groups = None
    if continual.lrc is not None:
        groups = discriminative_lr_groups(linker.model, settings.lr, continual.lrc)
    log = fit_task(
        linker,
        task,
        settings,
        penalty=penalty,
        lr_groups=groups,
        replay=replay,
        progress=progress,
    )
    if isinstance(penalty, SlowLearner):
        penalty.finish()  # I-LoRA keeps the slow learner
    linker.meta |= {
        "history": [*linker.meta.get("history", []), task.name],
        "training": settings.to_json(),
        "continual": continual.to_json(names) | _lams_used(penalty, names),
    }
    return log


def _lams_used(penalty: Penalty, names: Sequence[str]) -> dict[str, Any]:
    """λ_t as trained with: fixed or Bayes' (``lam``), or a budget's last (``lam_final``)."""
    if isinstance(penalty, BudgetPenalty):
        return {"lam_final": dict(zip(names, penalty.lams, strict=True))}
    terms = getattr(penalty, "terms", None)
    if terms and len(terms) == len(names):
        return {"lam": {n: float(t[-1]) for n, t in zip(names, terms, strict=True)}}
    return {}


@dataclass(frozen=True)
class ToleranceSearch:
    """What ``update_within_tolerance`` tried: new-task dev accuracy (%) per λ."""

    tolerance: float
    reference: float  # plain fine-tuning's best dev accuracy (%)
    tried: dict[float, float]
    chosen: float  # 0: no λ of the grid stayed within the tolerance

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (λ keys as strings)."""
        return {
            "tolerance": self.tolerance,
            "reference_dev_accuracy": self.reference,
            "tried": {f"{lam:g}": acc for lam, acc in self.tried.items()},
            "chosen": self.chosen,
        }


def update_within_tolerance(
    linker: Linker,
    task: Task,
    states: Sequence[TaskState],
    settings: TrainSettings,
    continual: ContinualSettings,
    *,
    tolerance: float,
    grid: Sequence[float] = TOLERANCE_GRID,
    progress: bool = False,
) -> tuple[Linker, TrainLog, ToleranceSearch]:
    """The strongest protection that costs at most ``tolerance`` points of new-task dev.

    Trains plain fine-tuning (the reference the user can measure: the new task's dev
    accuracy; no penalty, no LRC, no replay), then ``continual`` (with its LRC and
    replay) at each λ of ``grid`` from the weakest, and keeps the largest λ whose
    new-task dev accuracy is within ``tolerance`` points of the reference; the search
    stops at the first λ beyond it. Reads only the new task.

    Returns:
        The trained linker (a copy; ``linker`` is left as it was), its log, the search.

    Raises:
        ValueError: a negative or non-finite ``tolerance``, or ``continual`` without a
            penalty (no strength to search).
    """
    check_tolerance(tolerance, continual.penalty)
    rate = continual.strength.budget_rate

    def fixed(penalty: str, lam: float | None) -> ContinualSettings:
        # plain fine-tuning has no curvature to damp: its δ falls back to none's
        damping = None if penalty == "none" else continual.damping
        strength = Strength(lam=lam, budget_rate=rate)
        return replace(continual, penalty=penalty, strength=strength, damping=damping)

    plain = replace(fixed("none", None), lrc=None, replay=None)
    best = copy.deepcopy(linker)
    best_log = update_linker(best, task, (), settings, plain, progress=progress)
    reference = 100.0 * best_log.best_dev_accuracy
    tried: dict[float, float] = {}
    chosen = 0.0
    for lam in sorted(grid):
        candidate = copy.deepcopy(linker)
        at_lam = fixed(continual.penalty, lam)
        log = update_linker(
            candidate, task, states, settings, at_lam, progress=progress
        )
        tried[lam] = 100.0 * log.best_dev_accuracy
        if tried[lam] < reference - tolerance:
            break
        best, best_log, chosen = candidate, log, lam
    search = ToleranceSearch(tolerance, reference, tried, chosen)
    best.meta["continual"]["tolerance_search"] = search.to_json()
    return best, best_log, search
