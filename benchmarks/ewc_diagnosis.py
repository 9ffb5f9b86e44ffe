"""Why diagonal EWC at a large λ forgets more than no penalty on the quickstart's demo.

The quickstart (mm-demo → psytar-demo → ncbi-demo) ends with diagonal EWC at λ = 1e3
below plain fine-tuning on the first task. This script isolates the first step: it
trains the quickstart's CNN on mm-demo, consolidates it (diagonal EWC, empirical
Fisher), then continues on psytar-demo with no penalty, EWC at each λ of ``--lams``
(with and without gradient clipping, to test whether clipping a stiff penalty gradient
is the cause) and KFC at the same λ, and prints for each: mm-demo and psytar-demo test
accuracy and, per layer, how far the weights moved from the anchor (Frobenius norm)
beside the layer's share of the diagonal Fisher's mass.

Usage (about a minute on 2 cores)::

    python benchmarks/ewc_diagnosis.py [--lams 1e3,1e5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import functools

import torch

from kfacel.demo import demo_tasks
from kfacel.linking.evaluate import evaluate_split
from kfacel.linking.linker import new_linker
from kfacel.penalties import build_penalty
from kfacel.training import fit
from kfacel.training.consolidate import consolidate_task

SETTINGS = {"epochs": 3, "lr": 1e-3, "batch_size": 32, "seed": 0}  # the quickstart's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lams", default="1e3,1e5", help="comma-separated λ values")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lams = [float(x) for x in args.lams.split(",")]
    old, new = demo_tasks()[:2]

    base = new_linker("cnn", old.train, hidden=128, seed=0)
    fit.fit_task(base, old, **SETTINGS)
    anchor = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    ewc_state = consolidate_task(base, old, method="ewc")
    kfac_state = consolidate_task(base, old, method="kfac")
    fisher = ewc_state.curvature.diagonal
    mass = {n: float(f.sum()) for n, f in fisher.items()}
    total = sum(mass.values())
    acc_old = evaluate_split(base, old.test).accuracy
    print(f"{old.name} alone: test accuracy {acc_old:.3f}")

    runs = [("none", 0.0, 1.0)]
    for lam in lams:
        runs += [("ewc", lam, 1.0), ("ewc", lam, None), ("kfac", lam, 1.0)]
    train_task = fit.train_task
    moved: dict[str, dict[str, float]] = {}
    try:
        for method, lam, clip in runs:
            fit.train_task = functools.partial(train_task, clip=clip)
            linker = copy.deepcopy(base)
            states = {"ewc": [ewc_state], "kfac": [kfac_state]}.get(method, [])
            penalty = build_penalty(method, states, [lam] * len(states))
            fit.fit_task(linker, new, penalty=penalty, **SETTINGS)
            a_old = evaluate_split(linker, old.test).accuracy
            a_new = evaluate_split(linker, new.test).accuracy
            label = method if method == "none" else f"{method} {lam:g}"
            label += "" if clip else " no clip"
            print(f"{label:18s} {old.name} {a_old:.3f}  {new.name} {a_new:.3f}")
            moved[label] = {
                n: float((p.detach() - anchor[n]).norm())
                for n, p in linker.model.named_parameters()
            }
    finally:
        fit.train_task = train_task

    labels = list(moved)
    print("\n|Δθ| per layer (Frobenius norm from the anchor) and Fisher mass share")
    print(f"{'parameter':22s} {'F share':>7s} " + " ".join(f"{x:>15s}" for x in labels))
    for n in anchor:
        share = mass.get(n, 0.0) / total
        row = " ".join(f"{moved[x][n]:15.4f}" for x in labels)
        print(f"{n:22s} {share:7.4f} {row}")


if __name__ == "__main__":
    main()
