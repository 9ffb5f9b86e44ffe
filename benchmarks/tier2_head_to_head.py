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
    orders = sorted({order for order, _ in r.chosen[2]})
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
    print("tier 2, task A test accuracy % (the λ chosen on dev in parentheses)\n")
    head = ["order", "none", *[f"{m} {lam:g}" for m, lam in grid]]
    head += [f"{m} chosen" for m in several]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    kept: dict[str, list[float]] = {m: [] for m in ["none", *methods]}
    cost: dict[str, list[float]] = {m: [] for m in methods}
    complete = []
    for order in orders:
        a, b = order
        none_a = r.accuracy("tier2", order, "none", None, a)
        cells = [f"{none_a:.2f}"]
        cells += [f"{r.accuracy('tier2', order, m, lam, a):.2f}" for m, lam in grid]
        lams = {m: r.chosen[2].get((order, m)) for m in methods}
        cells += [
            "–"
            if lams[m] is None
            else f"{r.accuracy('tier2', order, m, lams[m], a):.2f} ({lams[m]:g})"
            for m in several
        ]
        print(f"| {a} → {b} | " + " | ".join(cells) + " |")
        if any(lam is None for lam in lams.values()):
            continue  # a method not finished on this order: left out of the summaries
        complete.append(order)
        none_b = r.accuracy("tier2", order, "none", None, b)
        kept["none"].append(r.delta(none_a, a))
        for m, lam in lams.items():
            kept[m].append(r.delta(r.accuracy("tier2", order, m, lam, a), a))
            cost[m].append(none_b - r.accuracy("tier2", order, m, lam, b))
    if not complete:
        print("\nno order has every method finished")
        return
    print(f"\nover the {len(complete)} orders every method finished:\n")
    print("| method (λ) | forgetting reduction, mean | new-task cost, mean |")
    print("|---|---:|---:|")
    for m in methods:
        fr = forgetting_reduction(kept[m], kept["none"])
        name = f"{m} at the λ chosen on dev" if m in several else m
        print(f"| {name} | {fr.percent:.1f}% | {sum(cost[m]) / len(cost[m]):.2f} |")
    for m, lam in [g for g in grid if g[0] in several]:  # each fixed λ, for the curve
        got = [r.delta(r.accuracy("tier2", o, m, lam, o[0]), o[0]) for o in complete]
        paid = [
            r.accuracy("tier2", o, "none", None, o[1])
            - r.accuracy("tier2", o, m, lam, o[1])
            for o in complete
        ]
        fr = forgetting_reduction(got, kept["none"])
        print(f"| {m} at {lam:g} | {fr.percent:.1f}% | {sum(paid) / len(paid):.2f} |")
    print("\nhead to head on task A (orders where the first keeps more):")
    for x, y in itertools.permutations(methods, 2):
        wins = sum(px > py for px, py in zip(kept[x], kept[y], strict=True))
        ties = sum(px == py for px, py in zip(kept[x], kept[y], strict=True))
        print(f"- {x} over {y}: {wins} of {len(complete)} ({ties} tied)")


if __name__ == "__main__":
    main()
