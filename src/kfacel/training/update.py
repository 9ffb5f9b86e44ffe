"""Continue training a linker on a new task while protecting its consolidated tasks.

The one way kfacel updates a model (``kfacel train --init``, the experiment cells of
tiers 2 and 3, the quickstart): the penalty of eq. (P1) is built from the consolidation
states alone (one term per finished task, each with its own λ_t), optionally with
discriminative learning rates (LRC) and experience replay, and the linker is trained on
the new task. No old data is read, except by replay, which is a reference method.
``save_linker(..., states=...)`` then carries the states forward with the new weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kfacel.consolidation import TaskState, build_penalty
from kfacel.data.records import LinkingExample
from kfacel.penalties.base import Penalty
from kfacel.penalties.ewc_kfac import DEFAULT_KFAC_DAMPING, check_damping_kind
from kfacel.tasks.directory import Task
from kfacel.training.budget import (
    DEFAULT_BUDGET,
    DEFAULT_BUDGET_RATE,
    BudgetPenalty,
    bayes_lams,
    budget_penalty,
    check_budget_rate,
    step_rate,
)
from kfacel.training.continual import discriminative_lr_groups
from kfacel.training.pipeline import Linker, fit_task
from kfacel.training.trainer import Replay, TrainLog, TrainSettings
from kfacel.types import FISHER_PENALTIES, PenaltyKind

MAX_LAM = 1e15
"""The largest λ accepted: the paper's grid ends at 1e9, and beyond this a float32
penalty value or gradient overflows for any sizeable step (``--lam 1e300`` is a typo)."""

PENALTIES = tuple(p.value for p in PenaltyKind)
"""Penalties an update can use: none, L2 to the anchor, diagonal EWC, KFC."""


@dataclass(frozen=True)
class Protection:
    """How an update protects the consolidated tasks.

    The strength of the penalty comes from exactly one of: a fixed λ (``lam``,
    ``lam_per_task``), the sequential-Bayes weight (``bayes``), or a forgetting budget
    (``budget``, ``budget_per_task``; ``kfac`` and ``ewc`` only), for which the trainer
    adapts λ_t so that the predicted rise of each old task's loss stays within ε_t
    (``training/budget.py``). A ``kfac`` or ``ewc`` penalty given none of them gets the
    default budget ``DEFAULT_BUDGET``. A ``kfac`` penalty given no damping gets the
    default factored damping ``DEFAULT_KFAC_DAMPING``; other penalties get none.

    Attributes:
        penalty: ``none``, ``l2``, ``ewc`` or ``kfac`` (the states' method must match).
        lam: λ for every consolidated task without its own entry in ``lam_per_task``.
        lam_per_task: λ_t by task name.
        bayes: λ_t = N_t / N_new from the states' task sizes.
        budget: ε for every consolidated task without its own ``budget_per_task``.
        budget_per_task: ε_t by task name (nats per example).
        budget_rate: the dual step of a budget per epoch: λ_t changes by at most this
            share over one epoch (``budget.dual_step`` takes ``budget_rate / steps``
            per optimizer step), so the same setting moves λ_t alike on small and
            large tasks.
        damping: δ added to every curvature where it is used (prior precision); None:
            ``DEFAULT_KFAC_DAMPING`` for ``kfac``, 0 otherwise.
        damping_kind: ``uniform`` (``δ I``, eq. P1) or ``factored`` (each Kronecker
            factor damped, eq. P4; ``kfac`` only); None: ``factored`` for ``kfac``,
            ``uniform`` otherwise.
        lrc: discriminative learning rates, η_ℓ = η_{ℓ+1}·γ (None: off).
        replay: earlier tasks' queries to replay (None: off; needs old data).
    """

    penalty: str = "none"
    lam: float | None = None
    lam_per_task: Mapping[str, float] = field(default_factory=dict)
    bayes: bool = False
    budget: float | None = None
    budget_per_task: Mapping[str, float] = field(default_factory=dict)
    budget_rate: float = DEFAULT_BUDGET_RATE
    damping: float | None = None
    damping_kind: str | None = None
    lrc: float | None = None
    replay: Replay[LinkingExample] | None = None

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming a value out of its range."""
        if self.penalty not in PENALTIES:
            raise ValueError(
                f"penalty must be one of {PENALTIES}, got {self.penalty!r}"
            )
        for task, lam in [(None, self.lam), *self.lam_per_task.items()]:
            if lam is not None and not (math.isfinite(lam) and 0 <= lam <= MAX_LAM):
                name = "lam" if task is None else f"lam_per_task {task}="
                raise ValueError(f"{name} must be a λ in [0, {MAX_LAM:g}], got {lam}")
        for task, eps in [(None, self.budget), *self.budget_per_task.items()]:
            if eps is not None and not (math.isfinite(eps) and eps > 0):
                name = "budget" if task is None else f"budget_per_task {task}="
                raise ValueError(f"{name} must be a finite ε > 0, got {eps}")
        rules = [
            self.lam is not None or bool(self.lam_per_task),
            self.bayes,
            self.budget is not None or bool(self.budget_per_task),
        ]
        if sum(rules) > 1:
            raise ValueError("lam: give one of λ, bayes or a budget, not several")
        if not any(rules) and self.penalty in FISHER_PENALTIES:
            object.__setattr__(self, "budget", DEFAULT_BUDGET)  # the product's default
            rules[2] = True
        if rules[2] and self.penalty not in FISHER_PENALTIES:
            raise ValueError(
                f"budget: a forgetting budget needs a Fisher (kfac or ewc), "
                f"not penalty {self.penalty!r}"
            )
        check_budget_rate(self.budget_rate)
        kfac = self.penalty == PenaltyKind.KFAC.value
        if self.damping is None:
            object.__setattr__(self, "damping", DEFAULT_KFAC_DAMPING if kfac else 0.0)
        if self.damping_kind is None:
            object.__setattr__(self, "damping_kind", "factored" if kfac else "uniform")
        damping, kind = self.curvature_damping
        if not (math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {damping}")
        check_damping_kind(kind, self.penalty)
        if self.lrc is not None and not 0 < self.lrc <= 1:
            raise ValueError(f"lrc must be a factor in (0, 1], got {self.lrc}")

    @property
    def curvature_damping(self) -> tuple[float, str]:
        """δ and how it enters the penalty (the defaults resolved)."""
        assert self.damping is not None and self.damping_kind is not None
        return self.damping, self.damping_kind

    def lams(self, tasks: Sequence[str]) -> list[float]:
        """λ_t for each consolidated task, in order (all 0 without a penalty).

        Raises:
            ValueError: a penalty without consolidated tasks, ``lam_per_task`` naming a
                task that is not consolidated, or a task with no λ.
        """
        if self.penalty == "none" or self.bayes or self.budgets(tasks) is not None:
            return [0.0] * len(tasks)  # λ comes from the task sizes or the budget
        if not tasks:
            raise ValueError(
                f"penalty {self.penalty!r} needs a model with a consolidated task "
                "(run `kfacel consolidate` first)"
            )
        unknown = sorted(set(self.lam_per_task) - set(tasks))
        if unknown:
            raise ValueError(
                f"λ given for {unknown}; consolidated tasks are {list(tasks)}"
            )
        missing = [t for t in tasks if t not in self.lam_per_task and self.lam is None]
        if missing:
            raise ValueError(f"no λ for consolidated task(s) {missing}")
        return [float(self.lam_per_task.get(t, self.lam)) for t in tasks]  # type: ignore[arg-type]

    def budgets(self, tasks: Sequence[str]) -> list[float] | None:
        """ε_t for each consolidated task, or None without a budget.

        Raises:
            ValueError: a budget naming a task that is not consolidated, or a task
                left without one.
        """
        if self.budget is None and not self.budget_per_task:
            return None
        unknown = sorted(set(self.budget_per_task) - set(tasks))
        if unknown:
            raise ValueError(
                f"budget given for {unknown}; consolidated tasks are {list(tasks)}"
            )
        missing = [
            t for t in tasks if t not in self.budget_per_task and self.budget is None
        ]
        if missing:
            raise ValueError(f"no budget for consolidated task(s) {missing}")
        return [float(self.budget_per_task.get(t, self.budget)) for t in tasks]  # type: ignore[arg-type]

    def make_penalty(
        self, states: Sequence[TaskState], new_examples: int, steps_per_epoch: int = 1
    ) -> Penalty:
        """The penalty of ``states`` for a new task of ``new_examples`` queries."""
        names = [s.task for s in states]
        damping, kind = self.curvature_damping
        budgets = self.budgets(names) if self.penalty != "none" else None
        if budgets is not None:
            return budget_penalty(
                self.penalty,
                states,
                budgets,
                damping=damping,
                damping_kind=kind,
                rate=step_rate(self.budget_rate, steps_per_epoch),
            )
        if self.bayes and self.penalty != "none":
            lams = bayes_lams(states, new_examples)
        else:
            lams = self.lams(names)
        return build_penalty(
            self.penalty,
            states,
            lams,
            damping=damping,
            damping_kind=kind,
        )

    def describe(self, tasks: Sequence[str], *, tolerance: float | None = None) -> str:
        """The strength rule in effect, in one line (``kfacel train`` prints it).

        ``tolerance``: λ is searched by ``update_within_tolerance`` instead.

        >>> Protection(penalty="kfac").describe(["A", "B"])[:44]
        'protecting 2 tasks (A, B) with kfac, budget '
        >>> Protection(penalty="l2", lam=10.0).describe(["A", "B"])
        'protecting 2 tasks (A, B) with l2, λ=10'
        """
        if self.penalty == "none":
            line = "no penalty: plain fine-tuning"
        else:
            n = len(tasks)
            line = f"protecting {n} task{'s' * (n != 1)} ({', '.join(tasks)}) with "
            line += f"{self.penalty}, {self._strength(tasks, tolerance)}"
            delta, kind = self.curvature_damping
            if self.penalty == PenaltyKind.KFAC.value:
                line += f", damping {kind} δ={delta:g}"
            elif self.penalty == PenaltyKind.EWC.value:
                line += f", damping δ={delta:g}"
        if self.lrc is not None:
            line += f", LRC γ={self.lrc:g}"
        if self.replay is not None:
            r = self.replay
            line += f", replay of {len(r.items)} queries ({r.n} after every {r.every})"
        return line

    def _strength(self, tasks: Sequence[str], tolerance: float | None) -> str:
        """λ, Bayes' rule or the budget of ``describe``."""
        if tolerance is not None:
            lo, hi = min(TOLERANCE_GRID), max(TOLERANCE_GRID)
            return (
                f"the largest λ of {lo:g}…{hi:g} within {tolerance:g} points of plain "
                "fine-tuning's new-task dev accuracy"
            )
        if self.bayes:
            return "λ_t = N_t / N_new (bayes)"
        budgets = self.budgets(tasks)
        if budgets is not None:
            rate = f"rate {self.budget_rate:g}/epoch"
            return f"budget {_values('ε', tasks, budgets)} nats, {rate}"
        return _values("λ", tasks, self.lams(tasks))

    def to_json(self, tasks: Sequence[str]) -> dict[str, Any]:
        """What a model directory records as ``continual``."""
        fixed = not self.bayes and self.budgets(tasks) is None
        return {
            "penalty": self.penalty,
            "lam": dict(zip(tasks, self.lams(tasks), strict=True)) if fixed else None,
            "bayes": self.bayes,
            "budget": None
            if fixed or self.bayes
            else dict(zip(tasks, self.budgets(tasks) or [], strict=True)),
            "damping": self.damping,
            "damping_kind": self.damping_kind,
            "lrc": self.lrc,
            "replay_queries": len(self.replay.items) if self.replay else 0,
        }


def _values(name: str, tasks: Sequence[str], values: Sequence[float]) -> str:
    """``name`` with its one value, or with one value per task.

    >>> _values("λ", ["A", "B"], [1.0, 1.0]), _values("λ", ["A", "B"], [1.0, 2.0])
    ('λ=1', 'λ A=1, B=2')
    """
    if len(set(values)) <= 1:
        return f"{name}={values[0]:g}" if values else name
    return f"{name} " + ", ".join(
        f"{t}={v:g}" for t, v in zip(tasks, values, strict=True)
    )


def update_linker(
    linker: Linker,
    task: Task,
    states: Sequence[TaskState],
    settings: TrainSettings,
    protection: Protection,
    *,
    progress: bool = False,
) -> TrainLog:
    """Train ``linker`` on ``task`` with the penalty of ``states``; reads no old data.

    Args:
        linker: the model to continue from (trained on the consolidated tasks).
        task: the new task.
        states: consolidation states of the earlier tasks (``load_state``).
        settings: the training settings.
        protection: penalty, λ per task, damping, LRC and replay.
        progress: progress bars.

    Returns:
        The training log; ``linker.meta`` records the task in ``history`` and the
        settings under ``training`` and ``continual``.
    """
    names = [s.task for s in states]
    if protection.penalty != "none" and not states:
        raise ValueError(
            f"penalty {protection.penalty!r} needs a model with a consolidated task "
            "(run `kfacel consolidate` first)"
        )
    train = task.train[: settings.max_train] if settings.max_train else task.train
    steps = math.ceil(len(train) / settings.batch_size)
    penalty = protection.make_penalty(states, len(train), steps_per_epoch=steps)
    groups = None
    if protection.lrc is not None:
        groups = discriminative_lr_groups(linker.model, settings.lr, protection.lrc)
    log = fit_task(
        linker,
        task,
        settings,
        penalty=penalty,
        lr_groups=groups,
        replay=protection.replay,
        progress=progress,
    )
    linker.meta |= {
        "history": [*linker.meta.get("history", []), task.name],
        "training": settings.to_json(),
        "continual": protection.to_json(names) | _lams_used(penalty, names),
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


TOLERANCE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4)
"""λ tried by ``update_within_tolerance``, weakest first."""


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
    protection: Protection,
    *,
    tolerance: float,
    grid: Sequence[float] = TOLERANCE_GRID,
    progress: bool = False,
) -> tuple[Linker, TrainLog, ToleranceSearch]:
    """The strongest protection that costs at most ``tolerance`` points of new-task dev.

    Trains plain fine-tuning (the reference the user can measure: the new task's dev
    accuracy; no penalty, no LRC, no replay), then ``protection`` (with its LRC and
    replay) at each λ of ``grid`` from the weakest, and keeps the largest λ whose
    new-task dev accuracy is within ``tolerance`` points of the reference; the search
    stops at the first λ beyond it. Reads only the new task.

    Returns:
        The trained linker (a copy; ``linker`` is left as it was), its log, the search.

    Raises:
        ValueError: a negative or non-finite ``tolerance``, or ``protection`` without a
            penalty (no strength to search).
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number of points ≥ 0, got {tolerance}")
    if protection.penalty == "none":
        raise ValueError(
            "tolerance needs a penalty (ewc, kfac or l2): with penalty 'none' there "
            "is no strength to search"
        )

    def strength(penalty: str, lam: float | None) -> Protection:
        # plain fine-tuning has no curvature to damp: its δ falls back to none's
        delta, kind = (
            (None, None) if penalty == "none" else protection.curvature_damping
        )
        return replace(
            protection, penalty=penalty, lam=lam, lam_per_task={}, bayes=False,
            budget=None, budget_per_task={}, damping=delta, damping_kind=kind,
        )  # fmt: skip

    plain = replace(strength("none", None), lrc=None, replay=None)
    best = copy.deepcopy(linker)
    best_log = update_linker(best, task, (), settings, plain, progress=progress)
    reference = 100.0 * best_log.best_dev_accuracy
    tried: dict[float, float] = {}
    chosen = 0.0
    for lam in sorted(grid):
        candidate = copy.deepcopy(linker)
        fixed = strength(protection.penalty, lam)
        log = update_linker(candidate, task, states, settings, fixed, progress=progress)
        tried[lam] = 100.0 * log.best_dev_accuracy
        if tried[lam] < reference - tolerance:
            break
        best, best_log, chosen = candidate, log, lam
    search = ToleranceSearch(tolerance, reference, tried, chosen)
    best.meta["continual"]["tolerance_search"] = search.to_json()
    return best, best_log, search
