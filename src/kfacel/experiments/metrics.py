"""Continual-learning metrics and the paper's λ selection: pure numpy, no torch.

Accuracies are percentages (0–100), as in the paper's tables. An accuracy matrix is
``acc[i, j]`` = accuracy on task ``j`` after training on task ``i`` (rows: training
steps, columns: evaluated tasks; the runner's layout, docs/contributing.md); entries that were
never evaluated are NaN.

Definitions:

- **Perc Δ** of a task (McInerney et al. 2021, Tables 3–4):
  ``(acc_after − acc_individual) / acc_individual × 100``, negative when it forgot.
- **Forgetting reduction** of a method on the old task, per permutation (and seed):
  ``(acc_method − acc_none) / (acc_individual − acc_none) × 100``, the share of what plain
  fine-tuning forgot that the method kept. It equals ``1 − PercΔ_method / PercΔ_none``
  (both Perc Δ divide by the same individual accuracy). Where plain fine-tuning forgot
  less than ``MIN_FORGETTING`` points (or nothing) there is no reduction (``None``):
  it is never divided through. A method's reduction is the mean over permutations of
  the per-permutation values, not a ratio of means: on the paper's Table 3 only the
  former gives the figures quoted (KFC 51.6%, EWC 27.1% for BERT; KFC 74.5%, EWC 34.7%
  for the CNN; the ratio of means gives 39.5/20.0 and 74.2/35.1).
- **Intervals over seeds**: seeds are the unit; a claim's value per seed is a statistic
  over the permutations, its 95% interval the Student-t interval of the seeds' values
  (``t_interval``) and, with three seeds or more, the percentile interval of a cluster
  bootstrap over seeds (``bootstrap_interval``).
- **Average accuracy** ``ACC = 1/T Σ_j acc[T−1, j]`` and **backward transfer**
  ``BWT = 1/(T−1) Σ_{j<T−1} (acc[T−1, j] − acc[j, j])`` (Lopez-Paz & Ranzato 2017,
  "Gradient Episodic Memory for Continual Learning", NeurIPS, eqs. 2–3).
- **Forgetting** ``F = 1/(T−1) Σ_{j<T−1} max_{l<T−1} (acc[l, j] − acc[T−1, j])``
  (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning", ECCV, eqs. 5–6).
- **λ selection** (the paper's appendix A): per permutation, among the grid values whose
  new-task dev accuracy is within ``new_task_tolerance`` points of a reference, the one
  with the highest old-task dev accuracy. Tier 3 reuses the tier-2 optimum for the first
  task and centres a ×{0.01, 1, 100} grid for the second task on the mean of the tier-2
  optima of the permutations that start with it. The paper says "average"; we average in
  log10 space (the geometric mean), which is the reading that reproduces every off-grid
  value of the paper's Table 6 (1e2, 1e4, 1e6); the arithmetic mean of 1e3 and 1e5 would
  give 5.05e4 and no power of ten.
- **Cross-fitted selection** (``cross_fit``): the permutations are split into two folds
  (``two_folds``); one grid value is chosen on each fold's dev results
  (``choose_shared``) and used on the other fold's permutations, so that every
  permutation's test number comes from a value chosen without its own data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Literal

import numpy as np
from scipy import stats

Lambda = float | tuple[float, ...]
"""One λ, or one per regularized prior task (tier 3)."""


def perc_delta(acc_after: float, acc_individual: float) -> float:
    """Relative change of a task's accuracy against its individual model, in percent.

    Args:
        acc_after: accuracy on the task after further training.
        acc_individual: accuracy of the model trained on the task alone (tier 1).

    Returns:
        ``(acc_after − acc_individual) / acc_individual × 100``.

    Raises:
        ValueError: if ``acc_individual`` is not positive.

    >>> round(perc_delta(41.35, 76.75), 2)
    -46.12
    """
    if not acc_individual > 0:
        raise ValueError(f"acc_individual must be positive, got {acc_individual}")
    return (acc_after - acc_individual) / acc_individual * 100.0


@dataclass(frozen=True)
class ForgettingReduction:
    """Forgetting reduction of one method against no regularization.

    Attributes:
        percent: mean of ``per_permutation`` over the defined entries; NaN if none is.
        per_permutation: ``(1 − PercΔ_method / PercΔ_none) × 100`` per permutation, NaN
            where ``PercΔ_none ≥ 0`` (nothing forgot, the ratio is undefined).
        undefined: indices of permutations where plain fine-tuning did not forget.
        small: indices where plain fine-tuning forgot less than ``small_forgetting``
            percent (relative): the ratio is defined but noisy.
        none_forgetting: ``−PercΔ_none`` per permutation, to report beside the ratio.
    """

    percent: float
    per_permutation: tuple[float, ...]
    undefined: tuple[int, ...]
    small: tuple[int, ...]
    none_forgetting: tuple[float, ...]


def forgetting_reduction(
    perc_method: Sequence[float],
    perc_none: Sequence[float],
    *,
    small_forgetting: float = 5.0,
) -> ForgettingReduction:
    """Mean over permutations of ``1 − PercΔ_method(A) / PercΔ_none(A)``, in percent.

    Args:
        perc_method: Perc Δ of the first task under the method, one per permutation.
        perc_none: Perc Δ of the same task with no regularization, same order.
        small_forgetting: flag permutations where ``−PercΔ_none`` is below this.

    Returns:
        The mean, the per-permutation values and the flagged permutations. Undefined
        permutations (``PercΔ_none ≥ 0``) are left out of the mean with a warning.

    Raises:
        ValueError: if the sequences differ in length, are empty or hold NaN.
    """
    m = np.asarray(perc_method, dtype=float)
    n = np.asarray(perc_none, dtype=float)
    if m.shape != n.shape or m.ndim != 1 or m.size == 0:
        raise ValueError(
            f"perc_method {m.shape} and perc_none {n.shape} must be equal, 1-D, "
            "non-empty"
        )
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("Perc Δ values must be finite")
    defined = n < 0
    ratio = np.full_like(m, np.nan)
    ratio[defined] = (1.0 - m[defined] / n[defined]) * 100.0
    undefined = tuple(int(i) for i in np.flatnonzero(~defined))
    if undefined:
        warnings.warn(
            f"no forgetting without regularization in permutations {list(undefined)}: "
            "forgetting reduction undefined there, left out of the mean",
            stacklevel=2,
        )
    mean = float(ratio[defined].mean()) if defined.any() else math.nan
    small = tuple(int(i) for i in np.flatnonzero(defined & (-n < small_forgetting)))
    return ForgettingReduction(
        percent=mean,
        per_permutation=tuple(float(r) for r in ratio),
        undefined=undefined,
        small=small,
        none_forgetting=tuple(float(-x) for x in n),
    )


def _check_matrix(acc: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Return ``acc`` as a square float array with a finite lower triangle."""
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square [T, T], got {a.shape}")
    lower = np.tril_indices(a.shape[0])
    bad = [
        (int(i), int(j))
        for i, j in zip(*lower, strict=True)
        if not np.isfinite(a[i, j])
    ]
    if bad:
        raise ValueError(
            f"accuracy matrix has non-finite entries at (step, task) {bad}"
        )
    return a


def average_accuracy(acc: np.ndarray | Sequence[Sequence[float]]) -> float:
    """ACC: mean accuracy over all tasks after the last step (Lopez-Paz & Ranzato 2017).

    Args:
        acc: ``[T, T]`` accuracy matrix, ``acc[step, task]``.

    Returns:
        ``mean_j acc[T−1, j]``.

    >>> average_accuracy([[80.0, float("nan")], [60.0, 90.0]])
    75.0
    """
    a = _check_matrix(acc)
    return float(a[-1].mean())


def backward_transfer(acc: np.ndarray | Sequence[Sequence[float]]) -> float:
    """BWT: mean change on earlier tasks since learning them (Lopez-Paz & Ranzato 2017).

    Args:
        acc: ``[T, T]`` accuracy matrix, ``acc[step, task]``, ``T ≥ 2``.

    Returns:
        ``1/(T−1) Σ_{j<T−1} (acc[T−1, j] − acc[j, j])``; negative when it forgot.

    >>> backward_transfer([[80.0, float("nan")], [60.0, 90.0]])
    -20.0
    """
    a = _check_matrix(acc)
    if a.shape[0] < 2:
        raise ValueError("backward transfer needs at least two tasks")
    t = a.shape[0]
    return float(np.mean([a[-1, j] - a[j, j] for j in range(t - 1)]))


def forgetting(acc: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Average forgetting after the last step (Chaudhry et al. 2018, eqs. 5–6).

    Args:
        acc: ``[T, T]`` accuracy matrix, ``acc[step, task]``, ``T ≥ 2``.

    Returns:
        ``1/(T−1) Σ_{j<T−1} max_{l<T−1} (acc[l, j] − acc[T−1, j])``, the best accuracy
        each earlier task ever had minus its final one.

    >>> forgetting([[80, 0, 0], [70, 85, 0], [75, 60, 90]])
    15.0
    """
    a = _check_matrix(acc)
    t = a.shape[0]
    if t < 2:
        raise ValueError("forgetting needs at least two tasks")
    return float(np.mean([a[j : t - 1, j].max() - a[-1, j] for j in range(t - 1)]))


@dataclass(frozen=True)
class LambdaTrial:
    """Dev accuracies of one regularized run.

    Attributes:
        lam: the λ (or one λ per prior task) the run used.
        old_acc: dev accuracy on the task the λ regularizes toward.
        new_acc: dev accuracy on the task being trained.
    """

    lam: Lambda
    old_acc: float
    new_acc: float


def select_lambda(
    trials: Sequence[LambdaTrial],
    *,
    new_task_tolerance: float = 2.0,
    reference_new_acc: float | None = None,
) -> LambdaTrial:
    """Pick the λ with the least old-task drop "without too much drop" on the new task.

    The paper (appendix A) leaves "too much" open; we make it explicit: a trial is
    admissible when its new-task dev accuracy is at most ``new_task_tolerance``
    points below the reference, which is ``reference_new_acc`` if given (e.g. the
    unregularized run) and otherwise the best new-task accuracy among ``trials``.
    Among the admissible trials the highest old-task accuracy wins; ties go to the
    higher new-task accuracy, then to the smaller λ.

    Args:
        trials: one per grid value, all of one permutation and method.
        new_task_tolerance: accuracy points (not percent) the new task may lose.
        reference_new_acc: new-task accuracy the tolerance is measured from.

    Returns:
        The chosen trial.

    Raises:
        ValueError: if ``trials`` is empty, or no trial is admissible.
    """
    if not trials:
        raise ValueError("select_lambda needs at least one trial")
    if new_task_tolerance < 0:
        raise ValueError(f"new_task_tolerance must be ≥ 0, got {new_task_tolerance}")
    best_new = max(t.new_acc for t in trials)
    ref = best_new if reference_new_acc is None else reference_new_acc
    admissible = [t for t in trials if t.new_acc >= ref - new_task_tolerance]
    if not admissible:
        raise ValueError(
            f"no λ keeps the new-task accuracy within {new_task_tolerance} points of "
            f"{ref} (best {best_new}); widen the tolerance or the grid"
        )

    def key(t: LambdaTrial) -> tuple[float, ...]:
        lam = t.lam if isinstance(t.lam, tuple) else (t.lam,)
        return (-t.old_acc, -t.new_acc, *lam)

    return min(admissible, key=key)


def average_lambda(
    lams: Sequence[float], *, mean: Literal["geometric", "arithmetic"] = "geometric"
) -> float:
    """Average of λ values: geometric (mean of log10, the default) or arithmetic.

    >>> average_lambda([1e3, 1e5])
    10000.0
    """
    if not lams or any(not lam > 0 for lam in lams):
        raise ValueError(f"λ values must be positive and non-empty, got {list(lams)}")
    if mean == "arithmetic":
        return float(np.mean(lams))
    if mean != "geometric":
        raise ValueError(f"mean must be 'geometric' or 'arithmetic', got {mean!r}")
    return float(10.0 ** round(float(np.mean(np.log10(lams))), 12))


TIER3_FACTORS = (0.01, 1.0, 100.0)
"""The paper's multipliers of tier 3's centre λ (appendix A: ×0.01, ×1, ×100)."""


def tier3_lambda_grid(
    tier2_optima: Mapping[tuple[str, str], float],
    order: Sequence[str],
    *,
    factors: Sequence[float] = TIER3_FACTORS,
    mean: Literal["geometric", "arithmetic"] = "geometric",
    search_first: bool = False,
) -> list[tuple[float, float]]:
    """The (λ_first, λ_second) pairs tier 3 tries for one order of three tasks.

    λ_first is the tier-2 optimum of the pair ``(order[0], order[1])``; λ_second is
    centred on the average of the tier-2 optima of every permutation that starts with
    ``order[1]`` and scaled by ``factors`` (the paper's ×0.01, ×1, ×100). The paper
    reuses λ_first as it is; ``search_first=True`` scales it by ``factors`` too.

    Args:
        tier2_optima: chosen λ per ordered pair ``(task_a, task_b)``.
        order: three task names in training order.
        factors: multipliers of the centre values.
        mean: how the tier-2 optima are averaged (see the module docstring).
        search_first: also search around λ_first (a 9-point grid instead of 3).

    Returns:
        The candidate pairs, λ_first varying slowest.

    Raises:
        ValueError: if ``order`` is not three tasks or an optimum is missing.

    >>> tier3_lambda_grid({("a", "b"): 1e3, ("b", "a"): 1e3, ("b", "c"): 1e5}, "abc")
    [(1000.0, 100.0), (1000.0, 10000.0), (1000.0, 1000000.0)]
    """
    if len(order) != 3:
        raise ValueError(f"tier 3 needs an order of three tasks, got {list(order)}")
    first, second = order[0], order[1]
    if (first, second) not in tier2_optima:
        raise ValueError(f"no tier-2 optimum for ({first!r}, {second!r})")
    lam_first = float(tier2_optima[(first, second)])
    starts = [lam for (a, _), lam in sorted(tier2_optima.items()) if a == second]
    if not starts:
        raise ValueError(
            f"no tier-2 optimum for a permutation starting with {second!r}"
        )
    centre = average_lambda(starts, mean=mean)
    firsts = [lam_first * f for f in factors] if search_first else [lam_first]
    seconds = [_tidy(centre * f) for f in factors]
    return [(_tidy(a), b) for a, b in product(firsts, seconds)]


def _tidy(x: float) -> float:
    """Round to 12 significant digits so that 1e3 × 0.01 prints as 10.0."""
    return float(f"{x:.12g}")


MIN_FORGETTING = 0.5
"""Points plain fine-tuning must forget for a reduction to be defined (below: None)."""


def reduction(
    acc_method: float,
    acc_none: float,
    acc_individual: float,
    *,
    min_forgetting: float = MIN_FORGETTING,
) -> float | None:
    """Share of plain fine-tuning's forgetting that a method kept, in percent.

    Args:
        acc_method: the old task's accuracy after the method's continual training.
        acc_none: the same after plain fine-tuning.
        acc_individual: the old task's individual (tier-1) accuracy.
        min_forgetting: points plain fine-tuning must have forgotten.

    Returns:
        ``(acc_method − acc_none) / (acc_individual − acc_none) × 100``, which equals
        ``1 − PercΔ_method / PercΔ_none``; None where ``acc_individual − acc_none`` is
        below ``min_forgetting`` (plain fine-tuning forgot nothing, or almost nothing).

    >>> reduction(70.0, 60.0, 80.0), reduction(70.0, 79.8, 80.0)
    (50.0, None)
    """
    forgot = acc_individual - acc_none
    if not forgot >= min_forgetting:
        return None
    return (acc_method - acc_none) / forgot * 100.0


def mean_interval(
    values: Sequence[float], level: float = 0.95
) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the Student-t interval of ``values``.

    >>> [round(x, 3) for x in mean_interval([1.0, 3.0])]
    [2.0, 1.414, -10.706, 14.706]

    Raises:
        ValueError: fewer than two values.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"an interval needs at least 2 values, got {x.size}")
    t = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1))  # two-sided quantile
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = t * sd / math.sqrt(x.size)
    return mean, sd, mean - half, mean + half


def t_interval(
    values: Sequence[float], level: float = 0.95
) -> tuple[float, float] | None:
    """The Student-t interval of the mean of ``values``; None for fewer than two.

    >>> t_interval([1.0]) is None, [round(x, 3) for x in t_interval([1.0, 3.0])]
    (True, [-10.706, 14.706])
    """
    if len(values) < 2:
        return None
    _, _, lo, hi = mean_interval(values, level)
    return lo, hi


BOOTSTRAP_DRAWS = 10_000
BOOTSTRAP_SEED = 0
MIN_BOOTSTRAP = 3
"""Fewer seeds than this give no bootstrap interval (too few distinct resamples)."""


def bootstrap_interval(
    values: Sequence[float],
    level: float = 0.95,
    *,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile interval of the mean of ``values`` over resamples with replacement.

    Each value is one cluster (a seed with all its permutations), so this is the
    cluster bootstrap over seeds; the generator is fixed, the interval reproducible.

    Returns:
        ``(lo, hi)``, or None for fewer than ``MIN_BOOTSTRAP`` values.
    """
    x = np.asarray(values, dtype=float)
    if x.size < MIN_BOOTSTRAP:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(draws, x.size))].mean(axis=1)  # [draws]
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def two_folds(perms: Sequence[tuple[str, ...]]) -> tuple[list, list]:
    """The permutations sorted, then alternated into two folds (0, 2, … and 1, 3, …).

    >>> two_folds([("b", "a"), ("a", "c"), ("a", "b")])
    ([('a', 'b'), ('b', 'a')], [('a', 'c')])
    """
    ordered = sorted(perms)
    return ordered[0::2], ordered[1::2]


@dataclass(frozen=True)
class SharedChoice:
    """One grid value chosen for a set of permutations, with the dev numbers behind it.

    Attributes:
        value: the chosen λ (or ε).
        admissible: whether it kept the new task within the tolerance; False when no
            value did and the one with the smallest new-task cost was taken.
        old_dev: its old-task dev accuracy, averaged over the permutations.
        new_dev: its new-task dev accuracy, averaged over the permutations.
        reference_new_dev: plain fine-tuning's new-task dev accuracy, averaged alike.
    """

    value: float
    admissible: bool
    old_dev: float
    new_dev: float
    reference_new_dev: float


def choose_shared(
    trials: Mapping[tuple[str, ...], Sequence[LambdaTrial]],
    reference: Mapping[tuple[str, ...], float],
    *,
    tolerance: float,
) -> SharedChoice:
    """One grid value for every permutation of ``trials``, by ``select_lambda``'s rule.

    The old- and new-task dev accuracies of each value (seeds averaged) are averaged
    over the permutations, and so is plain fine-tuning's new-task dev accuracy
    (``reference``). Among the values within ``tolerance`` points of it, the best
    old-task accuracy wins; when none is, the smallest new-task cost, ``admissible``
    False. Only values present in every permutation compete.

    Raises:
        ValueError: no permutation, a missing reference, or no value common to all.
    """
    if not trials:
        raise ValueError("choose_shared needs at least one permutation")
    missing = [p for p in trials if p not in reference]
    if missing:
        raise ValueError(f"no plain fine-tuning reference for {missing}")
    by_value: dict[float, list[LambdaTrial]] = {}
    for ts in trials.values():
        for t in ts:
            by_value.setdefault(float(t.lam), []).append(t)  # type: ignore[arg-type]
    common = {v: ts for v, ts in by_value.items() if len(ts) == len(trials)}
    if not common:
        raise ValueError(f"no grid value is common to the permutations {list(trials)}")
    ref = float(np.mean([reference[p] for p in trials]))
    means = [
        LambdaTrial(v, float(np.mean([t.old_acc for t in ts])),
                    float(np.mean([t.new_acc for t in ts])))
        for v, ts in sorted(common.items())
    ]  # fmt: skip
    try:
        best = select_lambda(means, new_task_tolerance=tolerance, reference_new_acc=ref)
        admissible = True
    except ValueError:
        best = min(means, key=lambda t: (-t.new_acc, t.lam))
        admissible = False
    return SharedChoice(float(best.lam), admissible, best.old_acc, best.new_acc, ref)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CrossFit:
    """Two-fold cross-fitted choice: ``value_for[p]`` was chosen on the fold without p.

    Attributes:
        folds: the two folds of permutations (``two_folds``).
        choices: the choice made on each fold's dev results.
        value_for: per permutation, the value chosen on the other fold.
    """

    folds: tuple[list, list]
    choices: tuple[SharedChoice, SharedChoice]
    value_for: dict[tuple[str, ...], float]


def cross_fit(
    trials: Mapping[tuple[str, ...], Sequence[LambdaTrial]],
    reference: Mapping[tuple[str, ...], float],
    *,
    tolerance: float,
) -> CrossFit:
    """Choose on each fold's dev results, use the choice on the other fold.

    Args:
        trials: per permutation, one dev trial per grid value (seeds averaged).
        reference: per permutation, plain fine-tuning's new-task dev accuracy.
        tolerance: points of new-task dev accuracy a value may lose (``choose_shared``).

    Raises:
        ValueError: fewer than two permutations, or ``choose_shared``'s errors.
    """
    if len(trials) < 2:
        raise ValueError(f"cross-fitting needs two permutations, got {list(trials)}")
    folds = two_folds(list(trials))
    choices = tuple(
        choose_shared({p: trials[p] for p in f}, reference, tolerance=tolerance)
        for f in folds
    )
    value_for = {p: choices[1 - k].value for k, f in enumerate(folds) for p in f}
    return CrossFit(folds, (choices[0], choices[1]), value_for)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for < 3 pairs.

    >>> round(spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 40.0, 30.0]), 6)
    0.8
    """
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values but {len(y)} y values")
    if len(x) < 3:
        return math.nan
    rx, ry = _average_ranks(x), _average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
