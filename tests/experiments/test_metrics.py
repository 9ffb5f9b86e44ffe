"""Metrics against hand-computed values and the paper's own Tables 2, 3 and 6."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from kfacel.experiments import metrics
from kfacel.experiments.metrics import (
    LambdaTrial,
    average_accuracy,
    average_lambda,
    backward_transfer,
    forgetting,
    forgetting_reduction,
    perc_delta,
    select_lambda,
    tier3_lambda_grid,
)

# McInerney et al. 2021, Table 3 (tier 2), Task A columns, transcribed from the
# paper. Permutation order:
# MM→3D, MM→MN, 3D→MM, 3D→MN, MN→MM, MN→3D (MM MedMentions, 3D 3DNotes, MN MedNorm).
PERMS = [
    ("MM", "3D"),
    ("MM", "MN"),
    ("3D", "MM"),
    ("3D", "MN"),
    ("MN", "MM"),
    ("MN", "3D"),
]
TABLE3_PERC = {
    "cnn": {
        "none": [-46.12, -36.75, -40.32, -39.49, -43.95, -36.92],
        "ewc": [-27.81, -25.75, -29.02, -24.99, -23.43, -26.98],
        "kfc": [-10.68, -3.67, -15.04, -7.39, -15.68, -10.45],
    },
    "bert": {
        "none": [-24.82, -28.64, -30.95, -55.23, -72.10, -79.10],
        "ewc": [-9.91, -17.42, -23.59, -38.94, -74.95, -67.80],
        "kfc": [-4.93, -9.64, -10.42, -6.40, -72.07, -72.63],
    },
}
TABLE3_ACC = {
    "cnn": {
        "none": [41.35, 48.55, 46.48, 47.13, 49.59, 55.81],
        "ewc": [55.41, 56.98, 55.29, 58.42, 67.74, 64.60],
        "kfc": [68.55, 73.93, 66.18, 72.13, 74.59, 79.22],
    },
    "bert": {
        "none": [63.77, 60.53, 55.36, 35.89, 25.38, 19.01],
        "ewc": [76.41, 70.04, 61.26, 48.95, 22.78, 29.29],
        "kfc": [80.64, 76.64, 71.81, 75.04, 25.41, 24.89],
    },
}
# Table 2, individual models.
TABLE2_INDIVIDUAL = {
    "cnn": {"MM": 76.75, "3D": 77.89, "MN": 88.47},
    "bert": {"MM": 84.82, "3D": 80.16, "MN": 90.95},
}
# The figures the paper's tables give: (model, method) -> percent, 1 decimal.
PAPER_REDUCTION = {
    ("bert", "kfc"): 51.6,
    ("bert", "ewc"): 27.1,
    ("cnn", "kfc"): 74.5,
    ("cnn", "ewc"): 34.7,
}
# Table 6: per row (first two tasks of the order), Task A = tier-2 optimum of that pair,
# Task B = tier-3 λ chosen for the second task of the order (first, second, remaining).
TABLE6 = {
    ("cnn", "ewc"): [
        (1e3, 1e2),
        (1e3, 1e6),
        (1e3, 1e3),
        (1e5, 1e4),
        (1e7, 1e3),
        (1e5, 1e4),
    ],
    ("cnn", "kfc"): [
        (1e3, 1e1),
        (1e3, 1e5),
        (1e3, 1e3),
        (1e3, 1e7),
        (1e5, 1e3),
        (1e5, 1e3),
    ],
    ("bert", "ewc"): [
        (1e5, 1e5),
        (1e5, 1e5),
        (1e5, 1e5),
        (1e5, 1e5),
        (1e7, 1e3),
        (1e7, 1e5),
    ],
    ("bert", "kfc"): [
        (1e3, 1e2),
        (1e3, 1e5),
        (1e1, 1e3),
        (1e3, 1e5),
        (1e7, 1e1),
        (1e7, 1e2),
    ],
}


def test_doctests() -> None:
    result = doctest.testmod(metrics)
    assert result.attempted > 0
    assert result.failed == 0


def test_perc_delta_by_hand() -> None:
    assert perc_delta(60.0, 80.0) == pytest.approx(-25.0)
    assert perc_delta(88.0, 80.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="positive"):
        perc_delta(50.0, 0.0)


def test_perc_delta_reproduces_table3_from_tables_2_and_3() -> None:
    # The table's Perc Δ was computed from unrounded accuracies. Rounding both
    # accuracies to 0.005 moves Perc Δ by at most 0.5/ind·(1 + after/ind) ≤ 0.013
    # points (ind ≥ 76.75), plus 0.005 for the table's own rounding: 0.02.
    for model, by_method in TABLE3_ACC.items():
        for method, accs in by_method.items():
            for (a, _), acc, pd in zip(
                PERMS, accs, TABLE3_PERC[model][method], strict=True
            ):
                got = perc_delta(acc, TABLE2_INDIVIDUAL[model][a])
                assert got == pytest.approx(pd, abs=0.02), (model, method, a)


@pytest.mark.parametrize(("model", "method"), sorted(PAPER_REDUCTION))
def test_forgetting_reduction_reproduces_paper_from_table3_perc(
    model: str, method: str
) -> None:
    # Convention: mean over permutations of the per-permutation ratio, on the table's
    # rounded Perc Δ, rounded to one decimal.
    fr = forgetting_reduction(TABLE3_PERC[model][method], TABLE3_PERC[model]["none"])
    assert round(fr.percent, 1) == PAPER_REDUCTION[(model, method)]
    assert fr.undefined == ()


@pytest.mark.parametrize(("model", "method"), sorted(PAPER_REDUCTION))
def test_forgetting_reduction_reproduces_paper_from_recomputed_perc(
    model: str, method: str
) -> None:
    # Same convention on Perc Δ recomputed from the accuracies of Tables 2 and 3.
    ind = [TABLE2_INDIVIDUAL[model][a] for a, _ in PERMS]
    pm = [perc_delta(x, i) for x, i in zip(TABLE3_ACC[model][method], ind, strict=True)]
    pn = [perc_delta(x, i) for x, i in zip(TABLE3_ACC[model]["none"], ind, strict=True)]
    assert (
        round(forgetting_reduction(pm, pn).percent, 1)
        == PAPER_REDUCTION[(model, method)]
    )


def test_ratio_of_means_does_not_reproduce_paper() -> None:
    # Documents why the mean of ratios is the convention: BERT KFC would be 39.5%.
    m = np.mean(TABLE3_PERC["bert"]["kfc"])
    n = np.mean(TABLE3_PERC["bert"]["none"])
    assert round((1 - m / n) * 100, 1) == 39.5 != PAPER_REDUCTION[("bert", "kfc")]


def test_forgetting_reduction_by_hand_and_flags() -> None:
    with pytest.warns(UserWarning, match=r"permutations \[2\]"):
        fr = forgetting_reduction(
            [-5.0, -1.0, 2.0], [-10.0, -4.0, 1.0], small_forgetting=5.0
        )
    assert fr.per_permutation[:2] == pytest.approx((50.0, 75.0))
    assert math.isnan(fr.per_permutation[2])
    assert fr.percent == pytest.approx(62.5)
    assert fr.undefined == (2,)
    assert fr.small == (1,)
    assert fr.none_forgetting == pytest.approx((10.0, 4.0, -1.0))


def test_forgetting_reduction_undefined_warns_and_all_undefined_is_nan() -> None:
    with pytest.warns(UserWarning, match="no forgetting"):
        fr = forgetting_reduction([-1.0], [0.0])
    assert math.isnan(fr.percent)
    assert fr.undefined == (0,)


def test_forgetting_reduction_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal"):
        forgetting_reduction([-1.0], [-1.0, -2.0])
    with pytest.raises(ValueError, match="finite"):
        forgetting_reduction([math.nan], [-1.0])


NAN = math.nan
ACC3 = [[80.0, NAN, NAN], [70.0, 85.0, NAN], [75.0, 60.0, 90.0]]


def test_matrix_metrics_by_hand() -> None:
    assert average_accuracy(ACC3) == pytest.approx((75 + 60 + 90) / 3)
    # BWT = ((75 - 80) + (60 - 85)) / 2
    assert backward_transfer(ACC3) == pytest.approx(-15.0)
    # forgetting: task 0 best 80 -> 75 (5), task 1 best 85 -> 60 (25)
    assert forgetting(ACC3) == pytest.approx(15.0)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first() -> None:
    acc = [[50.0, NAN, NAN], [70.0, 80.0, NAN], [60.0, 80.0, 90.0]]
    assert forgetting(acc) == pytest.approx((10.0 + 0.0) / 2)
    assert backward_transfer(acc) == pytest.approx((10.0 + 0.0) / 2)


def test_matrix_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"\(1, 0\)"):
        forgetting([[80.0, NAN], [NAN, 90.0]])
    with pytest.raises(ValueError, match="two tasks"):
        backward_transfer([[80.0]])


def test_select_lambda_tolerance() -> None:
    trials = [
        LambdaTrial(1e1, old_acc=50.0, new_acc=80.0),
        LambdaTrial(1e3, old_acc=60.0, new_acc=79.0),
        LambdaTrial(1e5, old_acc=70.0, new_acc=78.5),
        LambdaTrial(1e7, old_acc=75.0, new_acc=70.0),
    ]
    assert select_lambda(trials).lam == 1e5  # best new 80, admissible ≥ 78
    assert select_lambda(trials, new_task_tolerance=1.0).lam == 1e3
    assert select_lambda(trials, new_task_tolerance=20.0).lam == 1e7
    assert select_lambda(trials, reference_new_acc=81.0).lam == 1e3
    with pytest.raises(ValueError, match="no λ"):
        select_lambda(trials, reference_new_acc=90.0)
    with pytest.raises(ValueError, match="at least one"):
        select_lambda([])


def test_select_lambda_ties_prefer_new_task_then_smaller_lambda() -> None:
    trials = [
        LambdaTrial(1e5, old_acc=70.0, new_acc=79.0),
        LambdaTrial(1e3, old_acc=70.0, new_acc=79.0),
        LambdaTrial(1e7, old_acc=70.0, new_acc=80.0),
    ]
    assert select_lambda(trials).lam == 1e7
    assert select_lambda(trials[:2]).lam == 1e3
    pairs = [LambdaTrial((1e3, 1e5), 70.0, 80.0), LambdaTrial((1e3, 1e1), 70.0, 80.0)]
    assert select_lambda(pairs).lam == (1e3, 1e1)


def test_average_lambda() -> None:
    assert average_lambda([1e1, 1e3]) == 1e2
    assert average_lambda([1e3, 1e5], mean="arithmetic") == pytest.approx(50500.0)
    with pytest.raises(ValueError, match="positive"):
        average_lambda([0.0])


def _tier2_optima(rows: list[tuple[float, float]]) -> dict[tuple[str, str], float]:
    return {perm: a for perm, (a, _) in zip(PERMS, rows, strict=True)}


@pytest.mark.parametrize("key", sorted(TABLE6))
def test_tier3_grid_geometric_mean_contains_every_table6_choice(
    key: tuple[str, str],
) -> None:
    optima = _tier2_optima(TABLE6[key])
    for (first, second), (lam_a, lam_b) in zip(PERMS, TABLE6[key], strict=True):
        (third,) = {"MM", "3D", "MN"} - {first, second}
        grid = tier3_lambda_grid(optima, (first, second, third))
        assert len(grid) == 3
        assert {a for a, _ in grid} == {lam_a}
        assert any(math.isclose(b, lam_b) for _, b in grid), (key, first, second, grid)


def test_tier3_grid_arithmetic_mean_misses_table6() -> None:
    optima = _tier2_optima(TABLE6[("cnn", "ewc")])
    grid = tier3_lambda_grid(optima, ("MM", "3D", "MN"), mean="arithmetic")
    assert not any(math.isclose(b, 1e2) for _, b in grid)  # Table 6 chose 1e2


def test_tier3_grid_search_first_and_errors() -> None:
    optima = {("a", "b"): 1e3, ("b", "c"): 1e5}
    grid = tier3_lambda_grid(optima, ("a", "b", "c"), search_first=True)
    assert len(grid) == 9
    assert grid[0] == (10.0, 1e3)
    assert grid[-1] == (1e5, 1e7)
    with pytest.raises(ValueError, match="three"):
        tier3_lambda_grid(optima, ("a", "b"))
    with pytest.raises(ValueError, match="starting with 'c'"):
        tier3_lambda_grid({("b", "c"): 1.0}, ("b", "c", "a"))
    with pytest.raises(ValueError, match=r"\('c', 'a'\)"):
        tier3_lambda_grid(optima, ("c", "a", "b"))


def test_spearman_matches_hand_ranks_with_ties() -> None:
    from kfacel.experiments.metrics import spearman

    # x ranks 1, 2.5, 2.5, 4; y ranks 1, 2, 3, 4: Pearson of the ranks by hand
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    hand = ((rx - rx.mean()) @ (ry - ry.mean())) / (
        np.linalg.norm(rx - rx.mean()) * np.linalg.norm(ry - ry.mean())
    )
    assert spearman([0.1, 0.5, 0.5, 2.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(hand)
    assert spearman([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0, 2.0], [1.0, 2.0]))


@pytest.mark.parametrize(
    ("acc_method", "acc_none", "acc_individual", "expected"),
    [
        (70.0, 60.0, 80.0, 50.0),  # kept half of 20 points
        (80.0, 60.0, 80.0, 100.0),
        (55.0, 60.0, 80.0, -25.0),  # forgot more than plain fine-tuning
        (70.0, 79.6, 80.0, None),  # forgot 0.4 points: below the guard
        (70.0, 79.5, 80.0, 100 * (70 - 79.5) / 0.5),  # exactly 0.5: defined
        (70.0, 80.0, 80.0, None),  # forgot nothing
        (70.0, 85.0, 80.0, None),  # improved
    ],
)
def test_reduction_by_hand_and_its_guard(
    acc_method: float, acc_none: float, acc_individual: float, expected: float | None
) -> None:
    got = metrics.reduction(acc_method, acc_none, acc_individual)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)
        # the same number as the paper's 1 − PercΔ_method / PercΔ_none
        pm = perc_delta(acc_method, acc_individual)
        pn = perc_delta(acc_none, acc_individual)
        assert got == pytest.approx(100 * (1 - pm / pn))


# Student-t 0.975 quantiles to 7 digits (any statistics table; scipy's agree).
T975 = {1: 12.7062047, 2: 4.3026527, 4: 2.7764451, 30: 2.0422725, 60: 2.0002978,
        100: 1.9839715}  # fmt: skip


@pytest.mark.parametrize("df", sorted(T975))
def test_t_interval_half_width_is_the_t_quantile_times_the_standard_error(
    df: int,
) -> None:
    x = np.random.default_rng(df).normal(size=df + 1)
    lo, hi = metrics.t_interval(list(x))
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert (hi - lo) / 2 / se == pytest.approx(T975[df], rel=1e-6)
    assert (hi + lo) / 2 == pytest.approx(x.mean())


def test_t_interval_needs_two_values() -> None:
    assert metrics.t_interval([3.0]) is None
    assert metrics.t_interval([]) is None


def test_bootstrap_interval_by_hand_and_reproducible() -> None:
    # resampled means of [0, 0, 3] are 0, 1, 2, 3 with probabilities 8, 12, 6, 1 /27:
    # the 2.5% quantile is 0 and P(mean ≤ 2) = 26/27 < 0.975, so the 97.5% one is 3
    assert metrics.bootstrap_interval([0.0, 0.0, 3.0]) == (0.0, 3.0)
    x = list(np.random.default_rng(3).normal(size=10))  # many distinct means
    assert metrics.bootstrap_interval(x) == metrics.bootstrap_interval(x)
    assert metrics.bootstrap_interval(x, seed=1) != metrics.bootstrap_interval(x)
    assert metrics.bootstrap_interval([5.0] * 4) == (5.0, 5.0)
    assert metrics.bootstrap_interval([1.0, 2.0]) is None  # fewer than 3 seeds


def _trials(table: dict) -> dict:
    return {p: [LambdaTrial(v, *on) for v, on in vs.items()] for p, vs in table.items()}


# A toy for cross-fitting: per permutation, value -> (old dev, new dev); plain
# fine-tuning's new dev is 80 everywhere, the tolerance 2 points.
AB, AC, BA, BC = ("a", "b"), ("a", "c"), ("b", "a"), ("b", "c")
TOY = {
    AB: {1.0: (50, 80), 10.0: (70, 79), 100.0: (95, 80)},  # 100 only here
    BA: {1.0: (60, 80), 10.0: (64, 78)},
    AC: {1.0: (10, 75), 10.0: (90, 74), 100.0: (99, 60)},
    BC: {1.0: (10, 76), 10.0: (90, 74), 100.0: (99, 60)},
}
REFERENCE = dict.fromkeys(TOY, 80.0)


def test_choose_shared_averages_over_the_fold_and_compares_only_common_values() -> None:
    # fold {ab, ba}: value 1 (55, 80), value 10 (67, 78.5) both within 2 of 80;
    # 10 keeps more; 100 is missing on ba and does not compete
    got = metrics.choose_shared(
        _trials({p: TOY[p] for p in (AB, BA)}), REFERENCE, tolerance=2.0
    )
    assert got == metrics.SharedChoice(10.0, True, 67.0, 78.5, 80.0)


def test_choose_shared_with_no_admissible_value_takes_the_smallest_cost() -> None:
    # fold {ac, bc}: new dev 75.5, 74, 60: none within 2 of 80; 1 costs least
    got = metrics.choose_shared(
        _trials({p: TOY[p] for p in (AC, BC)}), REFERENCE, tolerance=2.0
    )
    assert got == metrics.SharedChoice(1.0, False, 10.0, 75.5, 80.0)


def test_cross_fit_uses_each_folds_choice_on_the_other_fold() -> None:
    cf = metrics.cross_fit(_trials(TOY), REFERENCE, tolerance=2.0)
    assert cf.folds == ([AB, BA], [AC, BC])  # sorted: ab, ac, ba, bc; alternating
    assert [c.value for c in cf.choices] == [10.0, 1.0]
    assert cf.value_for == {AB: 1.0, BA: 1.0, AC: 10.0, BC: 10.0}


def test_cross_fit_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="two permutations"):
        metrics.cross_fit(_trials({AB: TOY[AB]}), REFERENCE, tolerance=2.0)
    with pytest.raises(ValueError, match="reference"):
        metrics.choose_shared(_trials(TOY), {AB: 80.0}, tolerance=2.0)
    with pytest.raises(ValueError, match="common"):
        metrics.choose_shared(
            _trials({AB: {1.0: (1, 1)}, BA: {10.0: (1, 1)}}), REFERENCE, tolerance=2.0
        )
