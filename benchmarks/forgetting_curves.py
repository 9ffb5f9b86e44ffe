"""The λ-free summary of forgetting runs: trade-off curves, seeds and calibration.

For every tier-2 pair A → B, seed and method with a strength grid (λ, or ε for the
budgeted methods), the curve runs from plain fine-tuning (strength 0) through the grid
from the weakest to the strongest (increasing λ, decreasing ε); each point is (new-task
test accuracy, old-task test accuracy). The summary of one curve is the **forgetting
reduction at ≤ 1 point of new-task cost**: the highest old-task accuracy on the
piecewise-linear curve whose new-task accuracy is at most 1 point below plain
fine-tuning's, as a share of what plain fine-tuning forgot,
``(kept − none) / (individual − none) × 100`` (``metrics.reduction``; a pair and seed
where plain fine-tuning forgot < 0.5 points gives none, and is named). It reads test
numbers along the whole curve (no λ is selected), so it compares factors, not
protocols. Means come with the standard deviation and a 95% t-interval over seeds.

Rules (no curve, one choice per pair and seed; test numbers at the chosen strength):
``old dev`` is the paper's protocol (the best old-task dev accuracy among the strengths
whose new-task dev accuracy is within T points of plain fine-tuning's; it reads old
data); ``tolerance T`` needs no old data (the largest strength, tried from the weakest
up to the first beyond T points of new-task dev, as ``kfacel train --tolerance T``
does); ``fixed`` is one strength for every pair (a default).

``--tolerance T`` sets the rules' bound on new-task dev (default 1; the paper's "without
too much drop" has no number, ``paper-cnn-small`` uses 2). ``--score dev`` scores the
rules on the dev splits instead of test (to choose a default without reading test), and
``--pairs A>B,...`` keeps only those pairs (to confirm a choice on the pairs it was not
made on).

Calibration: for every penalized continual cell, the penalty's predicted rise of task A's
mean loss (``½ ΔᵀF_AΔ``, the cell's ``done.json``) against the measured rise of A's mean
test loss over its individual model; Spearman's rank correlation per method, and the
median ratio predicted / measured.

    python benchmarks/forgetting_curves.py runs/forgetting-diagnosis [RUN_DIR ...]
    python benchmarks/forgetting_curves.py RUN_DIR --score dev --pairs medmentions>cadec
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from statistics import mean, median
from typing import Any

from kfacel.experiments.metrics import (
    MIN_FORGETTING,
    mean_interval,
    reduction,
    spearman,
)
from kfacel.experiments.results import calibration_points, cell_record, finished_cells

COST = 1.0  # points of new-task accuracy the summary allows


def kept_at_cost(points: list[tuple[float, float]], none_new: float) -> float:
    """Highest old accuracy on the piecewise-linear curve within ``COST`` of none's new.

    ``points``: (new, old) from strength 0 upward.
    """
    floor = none_new - COST
    best = points[0][1]
    for (n0, o0), (n1, o1) in pairwise(points):
        if n1 >= floor:
            best = max(best, o1)
        if (n0 >= floor) != (n1 >= floor):  # the cost crosses the bound: interpolate
            t = (floor - n0) / (n1 - n0)
            best = max(best, o0 + t * (o1 - o0))
    return best


def summarize(
    cells: list[dict[str, Any]],
    score: str = "test",
    pairs: set | None = None,
    tolerance: float = COST,
) -> None:
    individual = {  # (task, seed) -> the task's test and dev records
        (d["order"][0], d["seed"]): {
            split: cell_record(d, d["order"][0], split) for split in ("test", "dev")
        }
        for d in cells
        if d["kind"] == "individual"
    }
    if pairs is not None:
        cells = [d for d in cells if d["kind"] != "tier2" or tuple(d["order"]) in pairs]
    curves: dict[tuple, list] = defaultdict(list)
    none: dict[tuple, dict] = {}
    for d in cells:
        if d["kind"] != "tier2":
            continue
        a, b = d["order"]
        old, new = cell_record(d, a), cell_record(d, b)
        if d["method"] == "none":
            none[(a, b, d["seed"])] = {"old": old, "new": new, "cell": d}
            continue
        curves[(a, b, d["method"], d["seed"])].append(
            (d["lam"], new["accuracy"], old["accuracy"])
        )
    table: dict[tuple, list[float]] = defaultdict(list)
    for (a, b, m, seed), pts in sorted(curves.items()):
        base, ind = none.get((a, b, seed)), individual.get((a, seed))
        if base is None or ind is None:
            continue
        pts.sort(key=lambda p: _strength(m, p[0]))
        path = [(base["new"]["accuracy"], base["old"]["accuracy"])]
        path += [(n, o) for _, n, o in pts]
        kept = kept_at_cost(path, base["new"]["accuracy"])
        red = reduction(kept, base["old"]["accuracy"], ind["test"]["accuracy"])
        if red is None:  # plain fine-tuning forgot < MIN_FORGETTING points: no ratio
            print(f"{a}→{b} {m} seed {seed}: left out, {_no_forgetting(ind, base)}")
            continue
        table[(a, b, m)].append(red)
        line = ", ".join(f"{lam:g}: {o:.1f}/{n:.1f}" for lam, n, o in pts)
        print(
            f"{a}→{b} {m} seed {seed}: individual {ind['test']['accuracy']:.1f}, none "
            f"{base['old']['accuracy']:.1f}/{base['new']['accuracy']:.1f} | {line}"
        )
    print(f"\nforgetting reduction at ≤ {COST:g} point of new-task cost (test):")
    print("| pair | method | seeds | mean | sd | 95% interval |")
    print("|---|---|---:|---:|---:|---|")
    per_method: dict[str, list[float]] = defaultdict(list)
    for (a, b, m), vals in sorted(table.items()):
        per_method[m] += vals
        print(f"| {a} → {b} | {m} | {len(vals)} | {_fmt(vals)} |")
    for m, vals in sorted(per_method.items()):
        print(f"| all pairs | {m} | {len(vals)} | {_fmt(vals)} |")
    rules(cells, individual, none, score, tolerance)
    print(
        "\ncalibration (penalized cells): predicted ½ΔᵀFΔ vs measured rise of A's test loss"
    )
    print(
        "| method | cells | Spearman ρ | mean ρ within a pair | median predicted / measured |"
    )
    print("|---|---:|---:|---:|---:|")
    records = [r for d in cells for r in d["records"]]
    calib: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_pair: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for point in calibration_points(records, cells):  # as `kfacel report` reads them
        calib[point["method"]].append((point["predicted"], point["measured"]))
        key = (point["method"], "→".join(point["order"]))
        by_pair[key].append((point["predicted"], point["measured"]))
    for m, pairs in sorted(calib.items()):
        ratios = [p / q for p, q in pairs if q > 0]
        med = f"{median(ratios):.3g}" if ratios else "–"
        rho = spearman([p for p, _ in pairs], [q for _, q in pairs])
        within = [  # the scale of the under-prediction differs between old tasks
            spearman([p for p, _ in v], [q for _, q in v])
            for (method, _), v in by_pair.items()
            if method == m and len(v) >= 3
        ]
        mean_within = f"{sum(within) / len(within):.3f}" if within else "–"
        print(f"| {m} | {len(pairs)} | {rho:.3f} | {mean_within} | {med} |")


def rules(
    cells: list[dict[str, Any]],
    individual: dict,
    none: dict,
    score: str = "test",
    tolerance: float = COST,
) -> None:
    """Forgetting reduction and new-task cost of each choice rule (module doc).

    The rules choose on dev; ``score`` is the split their choice is scored on.
    """
    points: dict[tuple, list] = defaultdict(list)  # (a, b, method, seed) -> cells
    for d in cells:
        if d["kind"] == "tier2" and d["method"] != "none":
            a, b = d["order"]
            points[(a, b, d["method"], d["seed"])].append(d)
    out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    by_pair: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # old dev
    for (a, b, m, seed), ds in sorted(points.items()):
        base, ind = none.get((a, b, seed)), individual.get((a, seed))
        if base is None or ind is None:
            continue
        ds = sorted(ds, key=lambda d: _strength(m, d["lam"]))
        dev = {id(d): _acc(d, a, "dev") for d in ds}
        new_dev = {id(d): _acc(d, b, "dev") for d in ds}
        floor = _acc(base["cell"], b, "dev") - tolerance
        chosen: dict[str, dict | None] = {}
        ok = [d for d in ds if new_dev[id(d)] >= floor]
        chosen["old dev"] = max(ok, key=lambda d: dev[id(d)]) if ok else None
        tol = None
        for d in ds:
            if new_dev[id(d)] < floor:
                break
            tol = d
        chosen[f"tolerance {tolerance:g}"] = tol
        for d in ds:
            chosen[f"fixed {d['lam']:g}"] = d
        ind_old = ind[score]["accuracy"]
        none_old, none_new = _acc(base["cell"], a, score), _acc(base["cell"], b, score)
        if reduction(none_old, none_old, ind_old) is None:
            print(f"rules: {a}→{b} {m} seed {seed} left out: plain fine-tuning forgot "
                  f"{ind_old - none_old:.2f} points (< {MIN_FORGETTING:g}) on {score}")  # fmt: skip
            continue
        for rule, d in chosen.items():
            old, new = (none_old, none_new) if d is None else (
                _acc(d, a, score), _acc(d, b, score))  # fmt: skip
            red = reduction(old, none_old, ind_old)
            out[(m, rule)].append((red, none_new - new))
            if rule == "old dev":
                by_pair[(a, b, m)].append(red)
    print(
        f"\nchoice rules ({score}; reduction of the forgetting, new-task cost in points):"
    )
    print(
        "| method | rule | runs | reduction, mean | sd | 95% interval | new-task cost |"
    )
    print("|---|---|---:|---:|---:|---|---:|")
    for (m, rule), vals in sorted(
        out.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))
    ):
        reds = [r for r, _ in vals]
        cost = mean(c for _, c in vals)
        print(f"| {m} | {rule} | {len(vals)} | {_fmt(reds)} | {cost:.2f} |")
    head_to_head(by_pair)


def head_to_head(by_pair: dict[tuple[str, str, str], list[float]]) -> None:
    """Per pair, each method's mean reduction with λ chosen on the old task's dev set."""
    methods = sorted({m for _, _, m in by_pair})
    pairs = sorted({(a, b) for a, b, _ in by_pair})
    print("\nλ on the old task's dev set, mean reduction over seeds, per pair:")
    print("| pair | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for a, b in pairs:
        cells = [by_pair.get((a, b, m)) for m in methods]
        text = [f"{mean(c):.1f}%" if c else "–" for c in cells]
        print(f"| {a} → {b} | " + " | ".join(text) + " |")
    if {"kfac", "ewc"} <= set(methods):
        both = [
            (mean(by_pair[(a, b, "kfac")]), mean(by_pair[(a, b, "ewc")]))
            for a, b in pairs
            if by_pair.get((a, b, "kfac")) and by_pair.get((a, b, "ewc"))
        ]
        wins = sum(k > e for k, e in both)
        print(f"KFC above EWC in {wins} of {len(both)} pairs")


def _no_forgetting(ind: dict, base: dict) -> str:
    forgot = ind["test"]["accuracy"] - base["old"]["accuracy"]
    return f"plain fine-tuning forgot {forgot:.2f} points (< {MIN_FORGETTING:g})"


def _strength(method: str, value: float) -> float:
    """Weakest first: λ grows with strength, a budget ε shrinks with it."""
    return -value if method.endswith("-budget") else value


def _order(rule: str) -> tuple[int, float]:
    return (0, 0.0) if not rule.startswith("fixed") else (1, float(rule.split()[1]))


def _acc(d: dict[str, Any], task: str, split: str) -> float:
    return float(cell_record(d, task, split)["accuracy"])


def _fmt(vals: list[float]) -> str:
    if len(vals) < 2:
        return f"{mean(vals):.1f}% | – | –"
    m, sd, lo, hi = mean_interval(vals)
    return f"{m:.1f}% | {sd:.1f} | [{lo:.1f}, {hi:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="experiment run directories")
    parser.add_argument("--score", choices=("test", "dev"), default="test")
    parser.add_argument("--pairs", help="only these tier-2 pairs, e.g. a>b,c>d")
    parser.add_argument(
        "--tolerance", type=float, default=COST, help="rules: points of new-task dev"
    )
    args = parser.parse_args()
    pairs = None
    if args.pairs:
        pairs = {tuple(p.split(">")) for p in args.pairs.split(",")}
    for run in args.runs:
        print(f"# {run}\n")
        summarize(finished_cells(run), args.score, pairs, args.tolerance)


if __name__ == "__main__":
    main()
