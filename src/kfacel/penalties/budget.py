"""A forgetting budget as a penalty: the Lagrangian term and its dual step on λ.

With the Fisher ``F_t`` of old task ``t`` at its minimum ``θ*_t``, the quadratic
``q_t(θ) = ½ (θ − θ*_t)ᵀ F_t (θ − θ*_t)`` is the second-order prediction of how much the
mean loss of task ``t`` rises (nats per example) when the weights move to ``θ``. A
**forgetting budget** ``ε_t`` asks the trainer to keep ``q_t ≤ ε_t`` for every
consolidated task while it minimizes the new task's loss: the Lagrangian

    L(θ, λ) = loss_new(θ) + Σ_t λ_t (q_t(θ) − ε_t),  λ_t ≥ 0,

is minimized in θ by the optimizer and maximized in λ by projected dual ascent, one dual
step per optimizer step on the new task that was applied (``dual_step``; not on replay
steps, nor on steps a gradient scaler skipped). λ_t grows while its constraint is violated and
shrinks toward 0 (never below) while it is slack; at a fixed point either ``q_t = ε_t``
or ``λ_t = 0``, the KKT conditions of the constrained problem.

The budget's defaults and its per-run rate are strength rules
(``kfacel.penalties.strength``); ``kfacel.penalties.make`` builds a ``BudgetPenalty``
from consolidation states.

Reference: Platt & Barr 1988, "Constrained differential optimization", NeurIPS (the
dual-ascent multiplier update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.penalties.base import Penalty
from kfacel.penalties.strength import DEFAULT_STEP_RATE


def dual_step(
    lam: float, rise: float, budget: float, *, rate: float, floor: float
) -> float:
    """One projected dual-ascent step on λ for the constraint ``rise ≤ budget``.

    ``λ ← max(0, λ + rate · (λ + floor) · clip(rise/budget − 1, −1, 1))``: a relative
    step (λ spans orders of magnitude), ``floor`` lets λ leave 0, and the clipped
    violation bounds each step to a factor ``1 ± rate``. Its fixed points are those of
    plain dual ascent: ``rise = budget``, or ``λ = 0`` with ``rise ≤ budget``.

    >>> dual_step(0.0, 2.0, 1.0, rate=0.5, floor=1.0)
    0.5
    >>> dual_step(4.0, 0.0, 1.0, rate=0.5, floor=1.0)
    1.5
    """
    violation = min(max(rise / budget - 1.0, -1.0), 1.0)
    return max(0.0, lam + rate * (lam + floor) * violation)


@dataclass
class BudgetPenalty:
    """The Lagrangian term ``Σ_t λ_t q_t(θ)`` with λ_t updated by dual ascent.

    It has the ``Penalty`` protocol, so the trainer adds it like any penalty: each
    ``add_grad_`` adds ``Σ_t λ_t ∇q_t`` and records ``q_t``; ``after_task_step`` then
    takes one dual step per task. The trainer calls it only after an optimizer step on
    the new task that was applied, the steps ``rate`` is spread over (``strength.step_rate``).

    Attributes:
        units: one penalty per consolidated task with λ = 1 (its value is ``q_t``).
        budgets: ε_t per task (nats per example).
        tasks: the task names, for logs.
        lams: the current λ_t (start values; updated in place).
        rate: dual step size (relative, per optimizer step).
        floor: λ scale at which λ leaves 0 (module doc of ``dual_step``).
        rises: the last step's q_t per task.
    """

    units: list[Penalty]
    budgets: list[float]
    tasks: list[str]
    lams: list[float] = field(default_factory=list)
    rate: float = DEFAULT_STEP_RATE
    floor: float = 1.0
    rises: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check the budgets; λ_t start at 0 unless given."""
        if not (len(self.units) == len(self.budgets) == len(self.tasks)):
            raise ValueError("one unit penalty, budget and name per task")
        for task, eps in zip(self.tasks, self.budgets, strict=True):
            if not (math.isfinite(eps) and eps > 0):
                raise ValueError(f"budget of task {task!r} must be > 0, got {eps}")
        self.lams = list(self.lams) or [0.0] * len(self.units)
        self.rises = [math.nan] * len(self.units)

    @property
    def num_tasks(self) -> int:
        """How many consolidated tasks are constrained."""
        return len(self.units)

    def __call__(self, model: nn.Module) -> Tensor:
        """``Σ_t λ_t q_t(θ)`` at the current λ, differentiable."""
        terms = [
            lam * unit(model) for lam, unit in zip(self.lams, self.units, strict=True)
        ]
        return torch.stack(terms).sum()

    def add_grad_(self, model: nn.Module) -> Tensor:
        """Add ``Σ_t λ_t ∇q_t`` to ``.grad`` and record each ``q_t``; ``Σ λ_t q_t``.

        Each unit gives ``q_t`` and adds ``λ_t ∇q_t`` in place from one pass over its
        layers (``add_scaled_grad_``); a term with ``λ_t = 0`` only gives ``q_t``, which
        the dual step needs. A unit without that method is run on cleared gradients.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        total = params[0].new_zeros(())
        for t, unit in enumerate(self.units):
            lam = self.lams[t]
            scaled = getattr(unit, "add_scaled_grad_", None)
            if scaled is not None:
                rise = scaled(model, lam)
            else:
                rise = _value_and_add_grad_(unit, model, params, lam)
            total += lam * rise
            self.rises[t] = float(rise)
        return total

    def after_task_step(self) -> None:
        """One dual step per task on the ``q_t`` of the last ``add_grad_``.

        Call it once after each optimizer step on the new task that was applied.
        """
        for t, (rise, eps) in enumerate(zip(self.rises, self.budgets, strict=True)):
            if math.isfinite(rise):
                self.lams[t] = dual_step(
                    self.lams[t], rise, eps, rate=self.rate, floor=self.floor
                )

    def status(self) -> dict[str, Any]:
        """Per task: λ_t and the predicted rise q_t of the last step, and ε_t."""
        return {
            task: {"lam": lam, "predicted_rise": rise, "budget": eps}
            for task, lam, rise, eps in zip(
                self.tasks, self.lams, self.rises, self.budgets, strict=True
            )
        }


def _value_and_add_grad_(
    unit: Penalty, model: nn.Module, params: list[nn.Parameter], lam: float
) -> Tensor:
    """``unit``'s value; adds ``lam`` times its gradient to ``.grad`` (dense copies)."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        value = unit.add_grad_(model)
        grads = [p.grad for p in params]
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    if lam > 0:
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g.mul(lam) if p.grad is None else p.grad.add_(g, alpha=lam)
    return value
