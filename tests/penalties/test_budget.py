"""Forgetting budgets against closed forms.

The dual ascent is checked on a quadratic toy whose constrained optimum is known: for
``min ½‖w − b‖²`` s.t. ``½ wᵀFw ≤ ε`` with diagonal F, ``w_i = b_i / (1 + λ* F_i)`` where
λ* solves ``½ Σ F_i w_i² = ε`` (a monotone 1-D root, found by bisection here).
"""

import pytest
import torch
from torch import nn

from kfacel.consolidation import TaskState
from kfacel.curvature.factors import DiagonalFisher
from kfacel.penalties import build_penalty, make_penalty
from kfacel.penalties.budget import BudgetPenalty, dual_step
from kfacel.penalties.make import predicted_rise
from kfacel.penalties.strength import DEFAULT_STEP_RATE, TaskStrengths
from kfacel.types import FisherKind

F = torch.tensor([[1.0, 4.0, 0.25]], dtype=torch.float64)
B = torch.tensor([[2.0, -1.0, 3.0]], dtype=torch.float64)


def toy_state(task: str = "A", **meta) -> TaskState:
    anchor = {"weight": torch.zeros(1, 3, dtype=torch.float64)}
    fisher = DiagonalFisher({"weight": F.clone()}, FisherKind.EMPIRICAL, 10)
    return TaskState(task, "ewc", anchor, fisher, dict(meta))


def toy_model(w=None) -> nn.Linear:
    m = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.zeros(1, 3) if w is None else w)
    return m


def budget_penalty(method, states, budgets, *, rate=DEFAULT_STEP_RATE):
    """The ``BudgetPenalty`` that ``make_penalty`` builds for ``budgets``."""
    strengths = TaskStrengths(budgets=tuple(budgets), rate=rate)
    return make_penalty(method, states, strengths)


def analytic_multiplier(eps: float) -> float:
    def rise(lam: float) -> float:
        w = B / (1 + lam * F)
        return float(0.5 * (F * w * w).sum())

    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rise(mid) > eps else (lo, mid)
    return (lo + hi) / 2


def test_dual_ascent_meets_the_budget_with_equality_at_the_analytic_multiplier():
    eps = 0.5  # the unconstrained optimum w = b has ½ bᵀFb = 5.125 > ε: active
    model = toy_model()
    penalty = budget_penalty("ewc", [toy_state()], [eps], rate=0.05)
    for _ in range(6000):  # gradient descent on θ, dual ascent on λ
        model.weight.grad = None
        loss = 0.5 * (model.weight - B).pow(2).sum()
        loss.backward()
        penalty.add_grad_(model)
        with torch.no_grad():
            model.weight -= 0.05 * model.weight.grad
        penalty.after_task_step()
    lam_star = analytic_multiplier(eps)
    assert penalty.lams[0] == pytest.approx(lam_star, rel=1e-3)
    assert penalty.rises[0] == pytest.approx(eps, rel=1e-3)
    expected_w = B / (1 + lam_star * F)
    torch.testing.assert_close(model.weight.detach(), expected_w, rtol=1e-3, atol=1e-4)


def test_a_slack_budget_drives_lambda_to_zero():
    model = toy_model(B * 0.01)  # q ≪ ε
    penalty = BudgetPenalty(
        [build_penalty("ewc", [toy_state()], [1.0])], [10.0], ["A"], lams=[5.0]
    )
    for _ in range(2000):
        model.weight.grad = torch.zeros_like(model.weight)
        penalty.add_grad_(model)
        penalty.after_task_step()
    assert penalty.lams == [0.0]


def test_the_gradient_leaves_lambda_and_only_the_dual_step_moves_it():
    # the trainer calls after_task_step only after applied steps on the new task
    model = toy_model(B)  # q = 5.125 > ε: violated
    penalty = budget_penalty("ewc", [toy_state()], [1.0], rate=0.1)
    for _ in range(3):  # replay steps, or steps a gradient scaler skipped
        model.weight.grad = torch.zeros_like(model.weight)
        penalty.add_grad_(model)
    assert penalty.lams == [0.0]
    penalty.after_task_step()
    assert penalty.lams == [pytest.approx(0.1)]  # λ + rate·(λ + floor)·1


def test_the_penalty_gradient_is_lambda_times_the_unit_gradient():
    model = toy_model(B)
    penalty = budget_penalty("ewc", [toy_state()], [1.0])
    penalty.lams = [3.0]
    model.weight.grad = torch.ones_like(model.weight)
    value = penalty.add_grad_(model)
    torch.testing.assert_close(model.weight.grad, 1 + 3.0 * F * B)
    assert float(value) == pytest.approx(3.0 * 0.5 * float((F * B * B).sum()))
    assert penalty.status()["A"]["predicted_rise"] == pytest.approx(5.125)


def test_dual_step_fixed_points_and_bounds():
    assert dual_step(2.0, 1.0, 1.0, rate=0.1, floor=1.0) == 2.0  # q = ε: stays
    assert dual_step(0.0, 0.5, 1.0, rate=0.1, floor=1.0) == 0.0  # slack at 0: stays
    assert dual_step(2.0, 1e9, 1.0, rate=0.1, floor=1.0) == pytest.approx(
        2.3
    )  # ≤ 1+rate


def test_predicted_rise_is_half_the_fisher_quadratic():
    assert predicted_rise(toy_model(B), toy_state()) == pytest.approx(5.125)
