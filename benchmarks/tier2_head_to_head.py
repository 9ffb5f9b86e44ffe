r"""Tier 2 across runs that share their tier-1 models: each method at the paper's chosen λ.

The λ-grid variants of a protocol run (`benchmarks/fork_run.py --copy`) hold one method
each beside copies of the main run's tier-1 and plain fine-tuning cells. This reads
several such runs as one (a cell present in more than one counts once), chooses each
method's λ per order by the paper's rule (the config's new-task tolerance on dev,
`kfacel.experiments.sweep.choose`), and prints per order the first task's test accuracy
for every method and grid point, then per method the mean forgetting reduction
(``1 − PercΔ_method / PercΔ_none`` of the first task), the mean new-task cost (none's
second-task test accuracy minus the method's, points) and the head-to-head count of each
pair of methods (orders where the first keeps more of task A):

    python benchmarks/tier2_head_to_head.py runs/paper-transformer-small-r13 \\
        runs/paper-transformer-small-lam-ewc runs/paper-transformer-small-lam-kfac
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from kfacel.experiments.metrics import forgetting_reduction
from kfacel.experiments.results import RunResults, read_run


def merged(runs: list[Path]) -> RunResults:
    """One ``RunResults`` over the runs' records, the first run's config, all methods."""
    records: dict[tuple[Any, ...], dict[str, Any]] = {}
    methods: list[str] = []
    config: dict[str, Any] = {}
    for run in runs:
        results, _ = read_run(run)
        config = config or results.config
        methods += [m for m in results.methods if m not in methods]
        for r in results.records:
            records.setdefault((r["cell"], r["task"], r["split"]), r)
    return RunResults({**config, "methods": methods}, list(records.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    r = merged(args.runs)
    methods = [m for m in r.methods if m != "none"]
    grid = sorted(
        {
            (rec["method"], rec["lam"])
            for rec in r.records
            if rec["kind"] == "tier2" and rec["method"] != "none"
        },
        key=lambda ml: (methods.index(ml[0]), ml[1]),
    )
    several = [m for m in methods if sum(g[0] == m for g in grid) > 1]
    complete = accuracy_table(r, methods, grid, several)
    if not complete:
        print("\nno order has every method finished")
        return
    print(f"\nover the {len(complete)} orders every method finished:\n")
    print("| method (λ) | forgetting reduction, mean | new-task cost, mean |")
    print("|---|---:|---:|")
    chosen = {m: [r.chosen[2][(o, m)] for o in complete] for m in methods}
    none = kept_and_paid(r, complete, "none", [None] * len(complete))[0]
    kept: dict[str, list[float]] = {}
    for m in methods:
        kept[m], paid = kept_and_paid(r, complete, m, chosen[m])
        name = f"{m} at the λ chosen on dev" if m in several else m
        summary_row(name, kept[m], none, paid)
    for m, lam in [g for g in grid if g[0] in several]:  # each fixed λ, for the curve
        got, paid = kept_and_paid(r, complete, m, [lam] * len(complete))
        summary_row(f"{m} at {lam:g}", got, none, paid)
    print("\nhead to head on task A (orders where the first keeps more):")
    for x, y in itertools.permutations(methods, 2):
        wins = sum(px > py for px, py in zip(kept[x], kept[y], strict=True))
        ties = sum(px == py for px, py in zip(kept[x], kept[y], strict=True))
        print(f"- {x} over {y}: {wins} of {len(complete)} ({ties} tied)")


def accuracy_table(
    r: RunResults, methods: list[str], grid: list[tuple[str, Any]], several: list[str]
) -> list[tuple[str, ...]]:
    """Print task A's test accuracy per order; return the orders every method finished."""
    print("tier 2, task A test accuracy % (the λ chosen on dev in parentheses)\n")
    head = ["order", "none", *[f"{m} {lam:g}" for m, lam in grid]]
    head += [f"{m} chosen" for m in several]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    complete = []
    for order in sorted({order for order, _ in r.chosen[2]}):
        a = order[0]
        cells = [f"{r.accuracy('tier2', order, 'none', None, a):.2f}"]
        cells += [f"{r.accuracy('tier2', order, m, lam, a):.2f}" for m, lam in grid]
        lams = {m: r.chosen[2].get((order, m)) for m in methods}
        cells += [
            "–"
            if lams[m] is None
            else f"{r.accuracy('tier2', order, m, lams[m], a):.2f} ({lams[m]:g})"
            for m in several
        ]
        print(f"| {' → '.join(order)} | " + " | ".join(cells) + " |")
        if all(lam is not None for lam in lams.values()):
            complete.append(order)  # the others are left out of the summaries
    return complete


def kept_and_paid(
    r: RunResults, orders: list[tuple[str, ...]], method: str, lams: list[Any]
) -> tuple[list[float], list[float]]:
    """Per order: Perc Δ of task A, and none's task-B test accuracy minus the method's."""
    kept, paid = [], []
    for (a, b), lam in zip(orders, lams, strict=True):
        kept.append(r.delta(r.accuracy("tier2", (a, b), method, lam, a), a))
        none_b = r.accuracy("tier2", (a, b), "none", None, b)
        paid.append(none_b - r.accuracy("tier2", (a, b), method, lam, b))
    return kept, paid


def summary_row(
    name: str, kept: list[float], none: list[float], paid: list[float]
) -> None:
    """One row: the mean forgetting reduction against none and the mean new-task cost."""
    fr = forgetting_reduction(kept, none)
    print(f"| {name} | {fr.percent:.1f}% | {sum(paid) / len(paid):.2f} |")


if __name__ == "__main__":
    main()
