"""Tier 3 of forgetting runs, every cell: the first task kept, the last task's cost.

``kfacel report`` follows the paper's protocol: a tier-3 order enters its tables only when
the choice rule (new-task dev within the config's tolerance) admits a λ for it. This
summary reads every finished tier-3 cell instead, each against plain fine-tuning on the
same order and seed, so a method is seen at the strengths it was run with:

    python benchmarks/tier3_summary.py RUN [RUN ...]

Per method: the forgetting reduction of the first task, ``1 − PercΔ_method / PercΔ_none``
(Perc Δ against the task's individual model, same seed; runs where plain fine-tuning did
not forget are left out), and the last task's cost, none's test accuracy minus the
method's, in points; mean, standard deviation and 95% interval over runs (order × seed).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from kfacel.experiments.metrics import forgetting_reduction, mean_interval, perc_delta
from kfacel.experiments.results import cell_record, finished_cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    cells = [d for run in args.runs for d in finished_cells(run)]
    individual = {
        (d["order"][0], d["seed"]): cell_record(d, d["order"][0])["accuracy"]
        for d in cells
        if d["kind"] == "individual"
    }
    tier3 = {
        (d["method"], tuple(d["order"]), d["seed"]): d
        for d in cells
        if d["kind"] == "tier3"
    }
    runs: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for (method, order, seed), d in sorted(tier3.items()):
        none = tier3.get(("none", order, seed))
        if method == "none" or none is None or (order[0], seed) not in individual:
            continue
        ind = individual[(order[0], seed)]
        last = order[-1]
        runs[method].append(
            (
                perc_delta(cell_record(d, order[0])["accuracy"], ind),
                perc_delta(cell_record(none, order[0])["accuracy"], ind),
                cell_record(none, last)["accuracy"] - cell_record(d, last)["accuracy"],
            )
        )
    kept: dict[str, list[float]] = {}
    cost: dict[str, list[float]] = {}
    for method, rows in runs.items():
        got, lost, paid = zip(*rows, strict=True)
        fr = forgetting_reduction(got, lost)  # runs where none did not forget: left out
        defined = [i for i in range(len(rows)) if i not in fr.undefined]
        kept[method] = [fr.per_permutation[i] for i in defined]
        cost[method] = [paid[i] for i in defined]
    print(
        "| method | runs | reduction, mean | sd | 95% interval | last task's cost, mean [95%] |"
    )
    print("|---|---:|---:|---:|---|---|")
    for method in sorted(kept):
        m, sd, lo, hi = mean_interval(kept[method])
        c, _, clo, chi = mean_interval(cost[method])
        print(
            f"| {method} | {len(kept[method])} | {m:.1f}% | {sd:.1f} | [{lo:.1f}, {hi:.1f}] "
            f"| {c:.2f} [{clo:.2f}, {chi:.2f}] |"
        )


if __name__ == "__main__":
    main()
