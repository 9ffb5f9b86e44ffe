"""The penalty of a Hugging Face run: the states grouped by method, with shared strengths.

States may mix methods (a ``kfac`` state of one task, an ``l2`` one of another); each
method gets one ``kfacel.penalties.make_penalty`` over its states, with the strength rule
and the damping of every other entry point (``kfacel.penalties.strength``: ``Strength``,
``Damping``), resolved the same way as ``kfacel train`` resolves its options:

- no strength: a Fisher penalty gets the default forgetting budget ε =
  ``DEFAULT_BUDGET`` at ``DEFAULT_BUDGET_RATE`` per run; an ``l2`` state needs a λ;
- no damping: ``kfac`` gets ``DEFAULT_KFAC_DAMPING`` factored (eq. P4), others none; a δ
  without a kind gets the method's kind (``factored`` for ``kfac``).

The Trainer's loss is a mean per **loss term** (a labelled token of a token task, an
example of a sequence task), so a budget is given per loss term; ``½ΔᵀFΔ`` predicts the
rise of an example's summed loss (K9), so it is kept as ``ε·T/N`` per example with the
state's labelled terms T and examples N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from kfacel.consolidation import TASK_EXAMPLES, TaskState
from kfacel.hf.states import LOSS_TERMS
from kfacel.penalties import Penalty, make_penalty
from kfacel.penalties.strength import Damping, Strength, TaskStrengths


@dataclass(frozen=True)
class MethodGroup:
    """The states of one method with their strengths (budgets per example) and damping."""

    method: str
    states: tuple[TaskState, ...]
    strengths: TaskStrengths
    damping: Damping

    def build(self) -> Penalty:
        """The group's penalty, one term per state (eq. P1)."""
        return make_penalty(self.method, self.states, self.strengths, self.damping)


def plan_groups(
    states: Sequence[TaskState],
    strength: Strength,
    damping: Damping | float | None = None,
    damping_kind: str | None = None,
    *,
    where: str = "KFCCallback",
) -> list[MethodGroup]:
    """One group per method of ``states``, in the order methods first appear.

    Args:
        states: the consolidated tasks.
        strength: the strength rule; ``lam_per_task`` / ``budget_per_task`` name tasks.
        damping: a ``Damping`` (δ and kind), a δ (its kind defaulted by method) or None
            (the defaults of the module doc).
        damping_kind: ``uniform`` or ``factored`` with a δ given as a number or None.
        where: the caller, named in errors.

    Raises:
        ValueError: ``bayes`` (the Trainer's new task size is unknown), a task named
            that no state has, an ``l2`` state without λ, a budget for an ``l2`` state,
            a damping kind the method cannot use, or a ``Damping`` with ``damping_kind``.
    """
    if not states:
        return []
    if strength.bayes:
        raise ValueError(
            f"{where}: bayes (λ_t = N_t / N_new) needs the new task's size in the "
            "penalty's units, which a Trainer does not know; give lam or budget"
        )
    names = [s.task for s in states]
    unknown = sorted(
        (set(strength.lam_per_task) | set(strength.budget_per_task)) - set(names)
    )
    if unknown:
        raise ValueError(f"{where}: strength given for {unknown}; states are {names}")
    groups = []
    for method in dict.fromkeys(s.method for s in states):
        group = tuple(s for s in states if s.method == method)
        rule = _restricted(strength, [s.task for s in group])
        if not strength.given and method == "l2":
            raise ValueError(
                f"{where}: l2 states have no curvature for a budget; give "
                "strength=Strength(lam=...)"
            )
        rule = rule.for_penalty(method)
        strengths = rule.per_task(method, group, new_examples=1)
        if strengths.budgets is not None:
            per_example = zip(strengths.budgets, group, strict=True)
            budgets = tuple(eps * terms_per_example(s) for eps, s in per_example)
            strengths = replace(strengths, budgets=budgets)
        groups.append(
            MethodGroup(
                method, group, strengths, _damping(method, damping, damping_kind)
            )
        )
    return groups


def _restricted(strength: Strength, tasks: Sequence[str]) -> Strength:
    """``strength`` with its per-task values limited to ``tasks``."""
    return replace(
        strength,
        lam_per_task={t: v for t, v in strength.lam_per_task.items() if t in tasks},
        budget_per_task={
            t: v for t, v in strength.budget_per_task.items() if t in tasks
        },
    )


def _damping(method: str, damping: Damping | float | None, kind: str | None) -> Damping:
    """The damping of ``method``'s penalty, defaulted as ``kfacel train`` defaults it."""
    if isinstance(damping, Damping):
        if kind is not None:
            raise ValueError("give damping=Damping(δ, kind) or damping_kind=, not both")
        return Damping.default_for(method, damping.delta, damping.kind)
    if damping is not None and not isinstance(damping, int | float):
        raise ValueError(
            f"damping takes a Damping or a number, got {type(damping).__name__}"
        )
    return Damping.default_for(
        method, None if damping is None else float(damping), kind
    )


def terms_per_example(state: TaskState) -> float:
    """The state's labelled loss terms per example (1 when it does not record them)."""
    terms, examples = state.meta.get(LOSS_TERMS), state.meta.get(TASK_EXAMPLES)
    if not terms or not examples:
        return 1.0
    return float(terms) / float(examples)
