"""Forgetting budgets and Bayes' λ against closed forms.

The dual ascent is checked on a quadratic toy whose constrained optimum is known: for
``min ½‖w − b‖²`` s.t. ``½ wᵀFw ≤ ε`` with diagonal F, ``w_i = b_i / (1 + λ* F_i)`` where
λ* solves ``½ Σ F_i w_i² = ε`` (a monotone 1-D root, found by bisection here).
"""

import math

import pytest
import torch
from torch import nn

from kfacel.consolidation import TaskState, build_penalty
from kfacel.curvature.factors import DiagonalFisher
from kfacel.training.budget import (
    TASK_EXAMPLES,
    BudgetPenalty,
    bayes_lams,
    budget_penalty,
    dual_step,
    predicted_rise,
)
from kfacel.training.update import Protection
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


def test_bayes_lambda_is_the_task_size_ratio_and_needs_the_count():
    states = [
        toy_state("A", **{TASK_EXAMPLES: 300}),
        toy_state("B", **{TASK_EXAMPLES: 50}),
    ]
    assert bayes_lams(states, 100) == [3.0, 0.5]
    with pytest.raises(ValueError, match="does not record its task's training-query"):
        bayes_lams([toy_state("C")], 100)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"penalty": "kfac", "budget": 0.0}, "budget must be a finite ε > 0"),
        ({"penalty": "kfac", "budget": -1.0}, "budget must be a finite ε > 0"),
        ({"penalty": "kfac", "budget": math.inf}, "budget must be a finite ε > 0"),
        ({"penalty": "l2", "budget": 0.1}, "needs a Fisher"),
        (
            {"penalty": "kfac", "budget": 0.1, "lam": 10.0},
            "one of λ, bayes or a budget",
        ),
        ({"penalty": "kfac", "budget_rate": 0.0}, "budget_rate must be in"),
    ],
)
def test_bad_budgets_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Protection(**kwargs)


def test_a_budget_for_a_task_that_is_not_consolidated_is_refused():
    p = Protection(penalty="ewc", budget_per_task={"Z": 0.1})
    with pytest.raises(ValueError, match=r"budget given for \['Z'\]"):
        p.make_penalty([toy_state("A")], 10)


def test_a_fisher_penalty_without_a_strength_gets_the_default_budget():
    from kfacel.training.update import DEFAULT_BUDGET

    assert Protection(penalty="kfac").budget == DEFAULT_BUDGET
    assert Protection(penalty="ewc").budgets(["A"]) == [DEFAULT_BUDGET]
    assert Protection(penalty="kfac", lam=3.0).budget is None  # a λ given: no budget
    with pytest.raises(ValueError, match="no λ for consolidated task"):
        Protection(penalty="l2").lams(["A"])  # L2 has no Fisher: it needs a λ


def test_kfac_without_a_damping_gets_the_default_factored_damping():
    from kfacel.training.update import DEFAULT_KFAC_DAMPING

    assert DEFAULT_KFAC_DAMPING > 0
    for given in ({}, {"lam": 3.0}, {"budget": 0.1}):
        p = Protection(penalty="kfac", **given)  # type: ignore[arg-type]
        assert p.curvature_damping == (DEFAULT_KFAC_DAMPING, "factored")
        assert p.to_json(["A"])["damping_kind"] == "factored"
    # a damping the user gives is kept, and keeps the factored split unless told
    assert Protection(penalty="kfac", damping=0.0).curvature_damping == (
        0.0,
        "factored",
    )
    uniform = Protection(penalty="kfac", damping=0.5, damping_kind="uniform")
    assert uniform.curvature_damping == (0.5, "uniform")
    # diagonal EWC and L2 have no Kronecker factors: undamped unless told
    assert Protection(penalty="ewc").curvature_damping == (0.0, "uniform")
    assert Protection(penalty="l2", lam=1.0).curvature_damping == (0.0, "uniform")


def test_the_dual_step_is_per_epoch_so_small_and_large_tasks_move_lambda_alike():
    from kfacel.training.update import DEFAULT_BUDGET_RATE

    p = Protection(penalty="ewc")
    large = p.make_penalty([toy_state()], 4160, steps_per_epoch=130)
    small = p.make_penalty([toy_state()], 600, steps_per_epoch=19)
    assert large.rate == pytest.approx(DEFAULT_BUDGET_RATE / 130)  # 0.01 per step
    assert small.rate == pytest.approx(DEFAULT_BUDGET_RATE / 19)
    # over one epoch of violated steps, λ + floor grows by the same factor on both
    grow = [(1 + pen.rate) ** steps for pen, steps in ((large, 130), (small, 19))]
    assert grow[0] == pytest.approx(grow[1], rel=0.05)
