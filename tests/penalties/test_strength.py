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
    step_rate,
)
from kfacel.training.continual import ContinualSettings
from tests.penalties.test_budget import toy_state


def settings(penalty, damping=None, **strength):
    """``ContinualSettings`` of ``penalty`` with the strength rule ``strength``."""
    return ContinualSettings(penalty, Strength(**strength), damping)


def update_penalty(given, states, new_examples, steps_per_epoch=1, epochs=1):
    """The penalty an update with ``given`` trains with (``update_linker``'s call)."""
    strengths = given.strength.per_task(
        given.penalty, states, new_examples, steps_per_epoch, epochs
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


def test_the_dual_step_is_per_run_so_tasks_and_epoch_counts_move_lambda_alike():
    p = settings("ewc")
    large = update_penalty(p, [toy_state()], 4160, steps_per_epoch=130, epochs=3)
    small = update_penalty(p, [toy_state()], 600, steps_per_epoch=19, epochs=3)
    one = update_penalty(p, [toy_state()], 600, steps_per_epoch=19, epochs=1)
    assert large.rate == DEFAULT_BUDGET_RATE / 3 / 130  # 0.01 per step
    assert small.rate == pytest.approx(DEFAULT_BUDGET_RATE / 57)
    assert one.rate == pytest.approx(DEFAULT_BUDGET_RATE / 19)
    # over the whole run of violated steps, λ + floor grows by the same factor on all
    runs = ((large, 390), (small, 57), (one, 19))
    grow = [(1 + pen.rate) ** steps for pen, steps in runs]
    # (a per-epoch rate gave a one-epoch run e^1.3 of a three-epoch run's e^3.9)
    top = math.exp(DEFAULT_BUDGET_RATE)
    assert all(top / 1.5 < g <= top for g in grow)


def test_the_default_per_run_rate_gives_the_old_per_epoch_step_bit_for_bit():
    """3.9 per run over 3 epochs is exactly 1.3 per epoch's step (the CLI's default)."""
    for steps in range(1, 2000):
        old = min(1.0, 1.3 / steps)  # the per-epoch rule
        assert step_rate(DEFAULT_BUDGET_RATE, steps, epochs=3) == old
        assert step_rate(13.0, steps, epochs=10) == old
