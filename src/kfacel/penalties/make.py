"""Build a penalty from consolidation states: the one place a penalty is put together.

:func:`make_penalty` is called by every caller that turns states into a penalty: an
update (``kfacel train --init``, the experiment cells, the quickstart, through
``kfacel.training.continual``) and ``kfacel.hf.KFCTrainer``. It gives one term per
state, eq. (P1), each with the strength ``TaskStrengths`` gives it: a fixed λ_t, or a
budget ε_t whose λ_t the ``BudgetPenalty`` adapts. :func:`build_penalty` is its public
name for fixed strengths (``kfacel.build_penalty``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kfacel.consolidation import TaskState
from kfacel.curvature.factors import DiagonalFisher, KFACFisher
from kfacel.penalties.base import NoPenalty, Penalty
from kfacel.penalties.budget import BudgetPenalty
from kfacel.penalties.ewc_diag import DiagonalEWCPenalty
from kfacel.penalties.ewc_kfac import KFACPenalty, check_damping_kind
from kfacel.penalties.l2 import L2Penalty
from kfacel.penalties.strength import NO_DAMPING, Damping, TaskStrengths
from kfacel.types import FISHER_PENALTIES


def make_penalty(
    method: str,
    states: Sequence[TaskState],
    strengths: TaskStrengths,
    damping: Damping = NO_DAMPING,
) -> Penalty:
    """The ``method`` penalty with one term per state; ``method="none"`` gives none.

    Args:
        method: ``none``, ``l2``, ``ewc`` or ``kfac`` (the states' curvature must fit).
        states: the consolidated tasks, in order.
        strengths: a fixed λ_t per state, or a budget ε_t per state (a
            ``BudgetPenalty``, ``kfac`` and ``ewc`` only).
        damping: δ and how it enters; ``factored`` (eq. P4) for ``kfac`` only.

    Raises:
        ValueError: no state to penalize, a count of λ that differs from the states, a
            state whose curvature does not fit the method (a K-FAC penalty needs
            K-FAC states, EWC diagonal ones), factored damping for another penalty
            than ``kfac``, or a budget for a penalty without a Fisher.
    """
    if strengths.budgets is None or method == "none":
        return _fixed(method, states, strengths.lams, damping)
    if method not in FISHER_PENALTIES:
        raise ValueError(
            f"a forgetting budget needs a Fisher: kfac or ewc, not {method!r}"
        )
    units = [_fixed(method, [s], [1.0], damping) for s in states]
    budgets = list(strengths.budgets)
    return BudgetPenalty(units, budgets, [s.task for s in states], rate=strengths.rate)


def build_penalty(
    method: str,
    states: Sequence[TaskState],
    lams: Sequence[float],
    *,
    damping: float = 0.0,
    damping_kind: str = "uniform",
) -> Penalty:
    """:func:`make_penalty` with a fixed λ per state, eq. (P1).

    ``damping_kind="factored"`` damps a K-FAC penalty's factors, eq. (P4).
    """
    strengths = TaskStrengths(lams=tuple(lams))
    return make_penalty(method, states, strengths, Damping(damping, damping_kind))


def predicted_rise(model: nn.Module, state: TaskState) -> float:
    """``q_t(θ) = ½ ΔᵀF_tΔ`` of ``state`` at the model's weights (λ = 1, no damping).

    For an ``l2`` state (no curvature) it is ``½ ‖Δ‖²``, not a loss prediction.
    """
    penalty = build_penalty(state.method, [state], [1.0])
    with torch.no_grad():
        return float(penalty(model))


def _fixed(
    method: str, states: Sequence[TaskState], lams: Sequence[float], damping: Damping
) -> Penalty:
    """The penalty with the fixed ``lams``, one term per state."""
    if method == "none":
        return NoPenalty()
    if not states:
        raise ValueError(
            f"penalty {method!r} needs a consolidated task; run `kfacel consolidate`"
        )
    if len(lams) != len(states):
        raise ValueError(f"{len(states)} consolidated tasks but {len(lams)} λ values")
    check_damping_kind(damping.kind, method)
    penalty: Any
    if method == "kfac":
        penalty = KFACPenalty(damping=damping.delta, damping_kind=damping.kind)
    elif method == "ewc":
        penalty = DiagonalEWCPenalty(damping=damping.delta)
    elif method == "l2":
        penalty = L2Penalty()
    else:
        raise ValueError(f"unknown penalty {method!r}; choose none, l2, ewc or kfac")
    for state, lam in zip(states, lams, strict=True):
        want = {"kfac": KFACFisher, "ewc": DiagonalFisher}.get(method)
        if want is not None and not isinstance(state.curvature, want):
            raise ValueError(
                f"task {state.task!r} was consolidated with {state.method!r}; "
                f"penalty {method!r} needs `kfacel consolidate --method {method}`"
            )
        penalty = penalty.add_task(state.anchor, state.curvature, lam=lam)
    result: Penalty = penalty
    return result
