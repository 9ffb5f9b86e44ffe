"""How much the quickstart's printed forgetting reduction moves across seeds and threads.

Runs the quickstart's library function (``run_quickstart``, one seed, methods none and
kfac at the CLI's defaults) on the shipped demo tasks once per seed and thread count,
each in a fresh process (a thread count is set once per process), and writes each
run's accuracies as ``<out>/seed<S>-threads<T>.json``. With ``--also-test DIR`` the same
models are also evaluated on the test splits of DIR's demo tasks (e.g. the earlier
250-query demo, ``git archive``d), so two test sets are compared on the same training.

Then it prints, for each test set, the spread (range and half-width, the "±") of:

- ``ratio``: the earlier printed number, the mean over the earlier tasks of
  ``1 − PercΔ_kfac / PercΔ_none`` (tasks with ``PercΔ_none ≥ 0`` left out), one seed;
- ``pooled K``: the number ``kfacel quickstart --seed S --seeds K`` prints (accuracies
  averaged over seeds S … S+K−1, reduction pooled over the earlier tasks that plain
  fine-tuning forgot), from the runs of those seeds at the same thread count.

Usage (a few minutes a run on 2 cores; runs already written are kept)::

    mkdir -p runs/demo-250 && git archive 6bf9ea6 src/kfacel/demo | tar x -C runs/demo-250
    python benchmarks/quickstart_spread.py --seeds 0,1,2,3,4,5 --threads 1,2 \
        --also-test runs/demo-250/src/kfacel/demo --out runs/quickstart-spread

``--epochs`` (default: the quickstart's) and ``--lr`` train each task in another regime;
give each its own ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from kfacel.experiments.metrics import forgetting_reduction, perc_delta
from kfacel.experiments.quickstart import EPOCHS, SMALL_FORGETTING

ONE_RUN = """
import json, sys, time
from pathlib import Path
import torch
seed, threads, out, also = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
epochs, lr = int(sys.argv[5]), float(sys.argv[6])
torch.set_num_threads(threads)
import kfacel.experiments.quickstart as qs
from kfacel.demo import demo_tasks
from kfacel.tasks.directory import load_task
tasks = demo_tasks()
other = {id(t.test): load_task(Path(also) / t.name).test for t in tasks} if also else {}
evaluate, calls = qs.evaluate_split, []
def both(linker, split, **kw):
    if other:
        calls.append(evaluate(linker, other[id(split)], **kw).accuracy)
    return evaluate(linker, split, **kw)
qs.evaluate_split = both
start = time.perf_counter()
r = qs.run_quickstart(
    tasks, methods=("none", "kfac"), seed=seed, seeds=1, epochs=epochs, lr=lr
)
run = {"seed": seed, "threads": threads, "wall_s": time.perf_counter() - start,
       "tasks": r.tasks, "shipped": {"individual": r.individual, "matrices": r.matrices}}
if other:  # the calls in run_quickstart's order: individual, then each method's steps
    n, k = len(tasks), len(tasks)
    ind = dict(zip(r.tasks, calls[:n]))
    mats = {}
    for m in ("none", "kfac"):
        mat = [[float("nan")] * n for _ in range(n)]
        mat[0][0] = ind[r.tasks[0]]
        for step in range(1, n):
            mat[step][: step + 1] = calls[k : k + step + 1]
            k += step + 1
        mats[m] = mat
    run["also"] = {"individual": ind, "matrices": mats}
Path(out).write_text(json.dumps(run, indent=1).replace("NaN", "null"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--also-test", default="", help="demo tasks of other test sets")
    parser.add_argument("--pooled", default="1,2,3", help="seeds per printed number")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="a task")
    parser.add_argument("--lr", type=float, default=1e-3, help="(quickstart: 1e-3)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for threads in (int(t) for t in args.threads.split(",")):
            path = args.out / f"seed{seed}-threads{threads}.json"
            if not path.exists():
                cmd = [sys.executable, "-c", ONE_RUN, str(seed), str(threads)]
                extra = [args.also_test, str(args.epochs), str(args.lr)]
                subprocess.run([*cmd, str(path), *extra], check=True)
            runs[seed, threads] = json.loads(path.read_text())
    for test in ("shipped", "also"):
        if all(test in r for r in runs.values()):
            _report(test, runs, [int(k) for k in args.pooled.split(",")])


def _report(test: str, runs: dict, pooled: list[int]) -> None:
    """The spread of the ratio and of each pooled number on one test set."""
    single = {k: _arrays(r[test]) for k, r in runs.items()}
    tasks = next(iter(runs.values()))["tasks"]
    print(f"test set: {test}")
    ratios = [_ratio(*single[k], tasks) for k in sorted(single)]
    print(f"  ratio (one seed): {_spread(ratios)}")
    for n in pooled:
        values = []
        for seed, threads in sorted(single):
            keys = [(seed + i, threads) for i in range(n)]
            if all(k in single for k in keys):
                values.append(_pooled([single[k] for k in keys], tasks))
        print(f"  pooled over {n} seed(s): {_spread(values)}")


def _arrays(block: dict) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Individual accuracies and matrices (None as NaN)."""
    mats = {
        m: np.array([[np.nan if a is None else a for a in row] for row in mat])
        for m, mat in block["matrices"].items()
    }
    return block["individual"], mats


def _ratio(individual: dict, mats: dict, tasks: list[str]) -> float:
    """The earlier quickstart's number: the mean over the earlier tasks of the ratios."""
    deltas = {
        m: [perc_delta(mats[m][-1][i], individual[t]) for i, t in enumerate(tasks[:-1])]
        for m in mats
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return forgetting_reduction(deltas["kfac"], deltas["none"]).percent


def _pooled(seeds: list[tuple[dict, dict]], tasks: list[str]) -> float:
    """``run_quickstart``'s number from single-seed runs (its mean and pooling)."""
    ind = {t: float(np.mean([s[0][t] for s in seeds])) for t in tasks}
    final = {m: np.mean([s[1][m][-1] for s in seeds], axis=0) for m in seeds[0][1]}
    deltas = {
        m: {t: perc_delta(final[m][i], ind[t]) for i, t in enumerate(tasks)}
        for m in final
    }
    kept = [t for t in tasks[:-1] if deltas["none"][t] < -SMALL_FORGETTING]
    if not kept:
        return math.nan
    lost = sum(deltas["none"][t] for t in kept)
    return 100.0 * (1.0 - sum(deltas["kfac"][t] for t in kept) / lost)


def _spread(values: list[float]) -> str:
    """Range, half-width and mean of the defined values."""
    v = [x for x in values if math.isfinite(x)]
    if not values:
        return "not enough seeds run"
    if not v:
        return f"undefined in all {len(values)}"
    return (
        f"{len(v)}/{len(values)} defined, {min(v):.1f}% .. {max(v):.1f}% "
        f"(± {(max(v) - min(v)) / 2:.1f} points), mean {np.mean(v):.1f}%; "
        + ", ".join(f"{x:.1f}" for x in values)
    )


if __name__ == "__main__":
    main()
