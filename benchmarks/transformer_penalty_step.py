"""The KFC penalty's share of a training step of the transformer ranker.

Trains the `kfacel train --model transformer` ranker (first 3 MiniLM layers) with
``train_task`` on the first queries of a task, plain and with the KFC penalty of one
earlier task (K-FAC on other queries of the same task, factored damping δ = 1e-6 as
`kfacel train --penalty kfac` uses), its factors whole or, with ``--ranks K ...``, also
kept at rank K (eq. K10, as `kfacel consolidate --factor-rank K` keeps them), in float32
and in bfloat16 autocast, alternating the runs ``--repeats`` times and keeping each one's
best throughput. Prints the training queries/s and each penalty step's cost as a ratio
to the plain step of the same precision; nothing is asserted.

    python benchmarks/transformer_penalty_step.py --ranks 64 128
"""

from __future__ import annotations

import argparse
import copy

import torch

import kfacel
from kfacel.linking.linker import new_linker
from kfacel.tasks.directory import load_task
from kfacel.training.trainer import TrainSettings, train_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="tasks/public3-small/medmentions")
    p.add_argument("--queries", type=int, default=192, help="training queries timed")
    p.add_argument("--fisher-queries", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ranks", type=int, nargs="*", default=[], help="factor ranks")
    p.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    old = task.train[args.queries : args.queries + args.fisher_queries]
    linker = new_linker("transformer", task.train, seed=0)
    fisher = kfacel.estimate_kfac(
        linker.model, [(b, b.labels) for b in linker.batches(old, 32)]
    )
    anchor = kfacel.snapshot(linker.model)
    penalties = {"plain": None} | {
        label: kfacel.KFACPenalty(damping=1e-6, damping_kind="factored").add_task(
            anchor, f, lam=1.0
        )
        for label, f in [("whole factors", fisher)]
        + [(f"rank {k}", kfacel.compress_factors(fisher, k)) for k in args.ranks]
    }
    batches = linker.batches(task.train[: args.queries], args.batch_size)
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for precision in args.precisions:
            for label, penalty in penalties.items():
                settings = TrainSettings(epochs=1, lr=2e-4, precision=precision)
                log = train_task(
                    copy.deepcopy(linker.model), batches, settings, penalty=penalty
                )
                key = (precision, label)
                best[key] = max(best.get(key, 0.0), log.queries_per_s)
    print(
        f"{args.task}: {args.queries} queries, batches of {args.batch_size}, "
        f"{args.threads} thread(s), best of {args.repeats}"
    )
    for precision in args.precisions:
        plain = best[(precision, "plain")]
        print(f"{precision:<9} plain {plain:6.2f} q/s")
        for label in list(penalties)[1:]:
            q = best[(precision, label)]
            print(f"  KFC, {label:<14} {q:6.2f} q/s: {plain / q:.3f}x a plain step")


if __name__ == "__main__":
    main()
