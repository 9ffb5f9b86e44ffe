"""Strength rules: Bayes' λ, budgets and their defaults, damping defaults, the dual rate."""

import math

import pytest

from kfacel.consolidation import TASK_EXAMPLES
from kfacel.penalties.make import make_penalty
from kfacel.penalties.strength import (
    DEFAULT_BUDGET,
    DEFAULT_BUDGET_RATE,
    DEFAULT_KFAC_DAMPING,
    Damping,
    Strength,
    bayes_lams,
)
from kfacel.training.continual import ContinualSettings
from tests.penalties.test_budget import toy_state


def settings(penalty, damping=None, **strength):
    """``ContinualSettings`` of ``penalty`` with the strength rule ``strength``."""
    return ContinualSettings(penalty, Strength(**strength), damping)


def update_penalty(given, states, new_examples, steps_per_epoch=1):
    """The penalty an update with ``given`` trains with (``update_linker``'s call)."""
    strengths = given.strength.per_task(
        given.penalty, states, new_examples, steps_per_epoch
    )
    return make_penalty(given.penalty, states, strengths, given.curvature_damping)


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
        settings(**kwargs)


def test_a_budget_for_a_task_that_is_not_consolidated_is_refused():
    p = settings("ewc", budget_per_task={"Z": 0.1})
    with pytest.raises(ValueError, match=r"budget given for \['Z'\]"):
        update_penalty(p, [toy_state("A")], 10)


def test_a_fisher_penalty_without_a_strength_gets_the_default_budget():
    assert settings("kfac").strength.budget == DEFAULT_BUDGET
    assert settings("ewc").strength.budgets(["A"]) == [DEFAULT_BUDGET]
    assert settings("kfac", lam=3.0).strength.budget is None  # a λ given: no budget
    with pytest.raises(ValueError, match="no λ for consolidated task"):
        settings("l2").strength.lams("l2", ["A"])  # L2 has no Fisher: it needs a λ


def test_kfac_without_a_damping_gets_the_default_factored_damping():
    assert DEFAULT_KFAC_DAMPING > 0
    for given in ({}, {"lam": 3.0}, {"budget": 0.1}):
        p = settings("kfac", **given)  # type: ignore[arg-type]
        assert p.curvature_damping == Damping(DEFAULT_KFAC_DAMPING, "factored")
        assert p.to_json(["A"])["damping_kind"] == "factored"
    # a damping the user gives is kept, and keeps the factored split unless told
    assert Damping.default_for("kfac", 0.0) == Damping(0.0, "factored")
    uniform = settings("kfac", Damping.default_for("kfac", 0.5, "uniform"))
    assert uniform.curvature_damping == Damping(0.5, "uniform")
    # diagonal EWC and L2 have no Kronecker factors: undamped unless told
    assert settings("ewc").curvature_damping == Damping(0.0, "uniform")
    assert settings("l2", lam=1.0).curvature_damping == Damping(0.0, "uniform")


def test_the_dual_step_is_per_epoch_so_small_and_large_tasks_move_lambda_alike():
    p = settings("ewc")
    large = update_penalty(p, [toy_state()], 4160, steps_per_epoch=130)
    small = update_penalty(p, [toy_state()], 600, steps_per_epoch=19)
    assert large.rate == pytest.approx(DEFAULT_BUDGET_RATE / 130)  # 0.01 per step
    assert small.rate == pytest.approx(DEFAULT_BUDGET_RATE / 19)
    # over one epoch of violated steps, λ + floor grows by the same factor on both
    grow = [(1 + pen.rate) ** steps for pen, steps in ((large, 130), (small, 19))]
    assert grow[0] == pytest.approx(grow[1], rel=0.05)
