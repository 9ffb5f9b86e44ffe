"""How large is a first task's Fisher: a benchmark run's consolidation against the demo's.

One fixed λ keeps much of PUBLIC-3-small's forgetting and collapses on the
quickstart's demo. Is the demo's Fisher larger? Per layer, the trace of the K-FAC block
(``tr(A)·tr(G)``) and of the diagonal empirical Fisher (the exact trace of the Fisher
block: the sum of its diagonal), for the K-FAC and EWC states of a run's consolidation
cells (``consolidate-TASK-kfac-sS``, ``…-ewc-sS``) and for mm-demo's CNN trained as the
quickstart trains it, with the same width.

    python benchmarks/fisher_scale.py runs/forgetting-wide-six --task medmentions --hidden 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kfacel.consolidation import TaskState, load_state
from kfacel.curvature.factors import trace
from kfacel.demo import demo_tasks
from kfacel.linking.linker import new_linker
from kfacel.training.consolidate import consolidate_task
from kfacel.training.fit import fit_task
from kfacel.training.trainer import TrainSettings


def traces(kfac: TaskState, ewc: TaskState) -> dict[str, tuple[float, float]]:
    """Layer -> (K-FAC trace, diagonal Fisher trace)."""
    diag = ewc.curvature.diagonal or {}
    out = {}
    for layer, f in (kfac.curvature.factors or {}).items():
        exact = sum(
            float(v.double().sum())
            for k, v in diag.items()
            if k.rsplit(".", 1)[0] == layer
        )
        out[layer] = (trace(f.A) * trace(f.G), exact)
    return out


def demo_traces(hidden: int, seed: int) -> dict[str, tuple[float, float]]:
    """mm-demo's CNN, trained as the quickstart trains it, consolidated both ways."""
    task = demo_tasks()[0]
    linker = new_linker("cnn", task.train, hidden=hidden, seed=seed)
    fit_task(linker, task, TrainSettings(epochs=3, lr=1e-3, batch_size=32, seed=seed))
    return traces(
        consolidate_task(linker, task, method="kfac"),
        consolidate_task(linker, task, method="ewc"),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an experiment run directory")
    p.add_argument("--task", default="medmentions", help="its first task")
    p.add_argument("--hidden", type=int, default=256, help="the run's CNN width")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cell = args.run / "cells" / f"consolidate-{args.task}-{{}}-s{args.seed}"
    run = traces(
        load_state(str(cell).format("kfac"))[0], load_state(str(cell).format("ewc"))[0]
    )
    demo = demo_traces(args.hidden, args.seed)
    print(
        f"| layer | {args.task} K-FAC | diagonal | ratio | mm-demo K-FAC | diagonal | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    total = [0.0, 0.0]
    for layer in sorted(run):
        (kr, dr) = run[layer]
        if layer not in demo:
            print(f"| {layer} | {kr:.3g} | {dr:.3g} | {kr / dr:.2f} | – | – | – |")
            continue
        (kd, dd) = demo[layer]
        total[0] += dr
        total[1] += dd
        print(
            f"| {layer} | {kr:.3g} | {dr:.3g} | {kr / dr:.2f} "
            f"| {kd:.3g} | {dd:.3g} | {kd / dd:.2f} |"
        )
    print(
        f"diagonal Fisher trace over the layers both have: {args.task} {total[0]:.4g}, "
        f"mm-demo {total[1]:.4g} ({total[1] / total[0]:.3f}×)"
    )


if __name__ == "__main__":
    main()
