"""Protection's cost per optimizer step, plain and protected steps alternating.

Builds a ranker (``cnn``; ``transformer``: the shipped MiniLM weights, ``--layers``
kept) on the demo task's queries, consolidates it on the first half of them (the old
task) and, per configuration (penalty kind × damping × strength), trains two copies from
the consolidated weights on the other half: a plain one and a protected one, stepping
them in turn (plain, protected, plain, protected, …) with the trainer's own step
(task loss, backward, the penalty's closed-form gradient, AdamW, the budget's dual step).
Pairing the steps makes the ratio robust to load from other processes on the machine;
the table gives the median ratio of protected to plain step time over ``--pairs`` pairs
(after ``--warmup`` pairs) and its interquartile range.

Strengths: ``fixed`` λ = 100; ``budget`` the default forgetting budget (ε, rate and
λ_t = 0 at the start, as ``kfacel train --budget`` starts); ``budget λ0=100`` the same
with λ_t started at 100, the steps after λ_t has grown (each step also adds λ_t ∇q_t).
Damping: ``none``; ``uniform`` and ``factored`` with the K-FAC default δ.
``--penalty-only`` times the penalty's gradient (``add_grad_``) alone instead, each
configuration against the fixed λ of the same kind and damping (then "plain" is that
fixed-λ penalty): the budget's own extra work, apart from the K-FAC products it shares.

    python benchmarks/protection_cost.py --models cnn --out runs/protection_cost.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from kfacel.consolidation.consolidate import ConsolidationSettings, consolidate
from kfacel.linking.linker import new_linker
from kfacel.penalties.budget import BudgetPenalty
from kfacel.penalties.make import make_penalty
from kfacel.penalties.strength import (
    DEFAULT_BUDGET,
    DEFAULT_KFAC_DAMPING,
    Damping,
    TaskStrengths,
)
from kfacel.tasks.directory import load_task
from kfacel.training.trainer import TrainSettings, _Step

TASK = Path(__file__).resolve().parents[1] / "src/kfacel/demo/mm-demo"
LAM = 100.0
DAMPINGS = {"l2": ["none"], "ewc": ["none", "uniform"]} | {
    "kfac": ["none", "uniform", "factored"]
}
STRENGTHS = {"l2": ["fixed"], "ewc": ["fixed", "budget", "budget λ0=100"]} | {
    "kfac": ["fixed", "budget", "budget λ0=100"]
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", "transformer"])
    p.add_argument("--layers", type=int, default=3, help="transformer layers kept")
    p.add_argument("--penalties", nargs="+", default=list(DAMPINGS))
    p.add_argument("--dampings", nargs="+", default=["none", "uniform", "factored"])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--penalty-only",
        action="store_true",
        help="time the penalty's gradient alone, against the fixed λ of the same kind",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON of every configuration")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(TASK)
    half = len(task.train) // 2
    rows: list[dict[str, Any]] = []
    for model_kind in args.models:
        linker = new_linker(model_kind, task.train, layers=args.layers, seed=0)
        old = [(b, b.labels) for b in linker.batches(task.train[:half], 32)]
        new = linker.batches(task.train[half:], args.batch_size)
        for method in args.penalties:
            state = consolidate(
                linker.model, old, ConsolidationSettings(method=method), task="old"
            )
            for damping in [d for d in DAMPINGS[method] if d in args.dampings]:
                for strength in STRENGTHS[method]:
                    penalty = _penalty(method, state, damping, strength)
                    if args.penalty_only:
                        fixed = _penalty(method, state, damping, "fixed")
                        row = _penalty_pair(linker.model, fixed, penalty, new, args)
                    else:
                        row = _pair(linker.model, penalty, new, args)
                    row |= {"model": model_kind, "penalty": method}
                    row |= {"damping": damping, "strength": strength}
                    rows.append(row)
                    _print(row)
    meta = {"threads": args.threads, "pairs": args.pairs, "warmup": args.warmup}
    meta |= {"batch_size": args.batch_size, "layers": args.layers, "lam": LAM}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": meta, "rows": rows}, indent=1))


def _penalty(method: str, state: Any, damping: str, strength: str) -> Any:
    """The protection of one configuration, as ``make_penalty`` builds it."""
    delta = 0.0 if damping == "none" else DEFAULT_KFAC_DAMPING
    kind = "factored" if damping == "factored" else "uniform"
    if strength == "fixed":
        strengths = TaskStrengths(lams=(LAM,))
    else:
        strengths = TaskStrengths(budgets=(DEFAULT_BUDGET,))
    penalty = make_penalty(method, [state], strengths, Damping(delta, kind))
    if strength == "budget λ0=100":
        assert isinstance(penalty, BudgetPenalty)
        penalty.lams = [LAM]
    return penalty


def _pair(model: Any, penalty: Any, batches: list, args: Any) -> dict[str, Any]:
    """Median and quartiles of protected/plain step time over alternating pairs."""
    settings = TrainSettings(epochs=1, lr=2e-4)
    steps = [
        _Step.build(copy.deepcopy(model), settings, pen, None, len(batches))
        for pen in (None, penalty)
    ]
    times: list[list[float]] = [[], []]
    for i in range(args.warmup + args.pairs):
        batch = batches[i % len(batches)]
        for k, step in enumerate(steps):
            t0 = time.perf_counter()
            step(batch, f"pair {i}")
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t0)
    ratios = [b / a for a, b in zip(*times, strict=True)]
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    lam = getattr(penalty, "lams", [LAM])[0]
    return {
        "plain_ms": 1e3 * statistics.median(times[0]),
        "protected_ms": 1e3 * statistics.median(times[1]),
        "ratio_median": med,
        "ratio_q1": q1,
        "ratio_q3": q3,
        "lam_end": lam,
    }


def _penalty_pair(
    model: Any, fixed: Any, penalty: Any, batches: list, args: Any
) -> dict[str, Any]:
    """The penalty's ``add_grad_`` alone, alternating with the fixed λ's (the "plain").

    The weights are those after ``--warmup`` plain steps (away from the anchor), the
    gradients those of one batch; the budget's λ_t stays at its start.
    """
    model = copy.deepcopy(model)
    step = _Step.build(model, TrainSettings(epochs=1, lr=2e-4), None, None, 1)
    for i in range(max(args.warmup, 1)):
        step(batches[i % len(batches)], f"warm-up {i}")
    times: list[list[float]] = [[], []]
    for i in range(args.warmup + args.pairs):
        for k, pen in enumerate((fixed, penalty)):
            t0 = time.perf_counter()
            pen.add_grad_(model)
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t0)
    ratios = [b / a for a, b in zip(*times, strict=True)]
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    return {
        "plain_ms": 1e3 * statistics.median(times[0]),
        "protected_ms": 1e3 * statistics.median(times[1]),
        "ratio_median": med,
        "ratio_q1": q1,
        "ratio_q3": q3,
        "lam_end": getattr(penalty, "lams", [LAM])[0],
    }


def _print(r: dict[str, Any]) -> None:
    print(
        f"{r['model']:<11} {r['penalty']:<4} {r['damping']:<8} {r['strength']:<14} "
        f"plain {r['plain_ms']:7.1f} ms  protected {r['protected_ms']:7.1f} ms  "
        f"ratio {r['ratio_median']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}]  "
        f"λ_end {r['lam_end']:.3g}",
        flush=True,
    )


if __name__ == "__main__":
    main()
