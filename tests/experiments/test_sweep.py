"""λ selection of a run (``sweep.choose``) against hand-picked dev accuracies."""

from __future__ import annotations

from kfacel.experiments.sweep import choose, left_out


def _trial(method, lam, old, new, order=("a", "b")):
    return [
        {"tier": 2, "split": "dev", "order": list(order), "method": method,
         "lam": lam, "task": task, "accuracy": acc}
        for task, acc in zip(order, (old, new), strict=True)
    ]  # fmt: skip


def test_tolerance_is_measured_from_plain_fine_tuning() -> None:
    """Plain fine-tuning learns B to 80. KFC's λ: 10 → (50, 79), 100 → (60, 77.5), 1000 → (70, 75).

    From none's 80 with 2 points, only λ = 10 is admissible (77.5 < 78), although
    λ = 100 is within 2 points of KFC's own best (79). L2 never learns B (≤ 40): it
    gets no λ at all rather than the least bad one.
    """
    records = _trial("none", None, 40, 80)
    records += _trial("kfac", 10.0, 50, 79) + _trial("kfac", 100.0, 60, 77.5)
    records += _trial("kfac", 1000.0, 70, 75)
    records += _trial("l2", 10.0, 79, 40) + _trial("l2", 1000.0, 80, 35)
    chosen = choose(records, tier=2, tolerance=2.0)
    assert chosen[(("a", "b"), "none")] is None
    assert chosen[(("a", "b"), "kfac")] == 10.0
    assert (("a", "b"), "l2") not in chosen


def test_without_plain_fine_tuning_the_methods_best_lambda_is_the_reference() -> None:
    records = _trial("kfac", 10.0, 50, 79) + _trial("kfac", 100.0, 60, 77.5)
    assert choose(records, tier=2, tolerance=2.0)[(("a", "b"), "kfac")] == 100.0


def test_a_single_budget_is_reported_whatever_its_new_task_cost() -> None:
    """One ε is the product's default: kept at 3 points below none (its cost shows).

    With two ε the tolerance chooses again, and one that loses B is dropped.
    """
    records = _trial("none", None, 40, 80) + _trial("kfac-budget", 0.005, 60, 77)
    assert choose(records, tier=2, tolerance=2.0)[(("a", "b"), "kfac-budget")] == 0.005
    records += _trial("kfac-budget", 0.05, 50, 79)
    assert choose(records, tier=2, tolerance=2.0)[(("a", "b"), "kfac-budget")] == 0.05


def test_what_choose_leaves_out_is_named_with_the_reason() -> None:
    """L2 never learns B (≤ 40 against none's 80); EWC was planned but never finished."""
    records = _trial("none", None, 40, 80) + _trial("kfac", 10.0, 50, 79)
    records += _trial("l2", 10.0, 79, 40) + _trial("l2", 1000.0, 80, 35)
    planned = [(("a", "b"), m) for m in ("none", "kfac", "l2", "ewc")]
    assert left_out(records, tier=2, tolerance=2.0, planned=planned) == [
        "tier 2 a→b ewc: no finished cell (failed, or not run yet)",
        "tier 2 a→b l2: new-task dev accuracy more than 2 points below plain "
        "fine-tuning's 80.00 at every λ (best 40.00, λ 10)",
    ]
    assert left_out(records, tier=3, tolerance=2.0) == []  # no tier-3 records
