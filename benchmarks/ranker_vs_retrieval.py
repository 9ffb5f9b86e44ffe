"""Where a ranker departs from retrieval's first candidate, and who is right.

For each query of a split of a retrieval task (candidates carrying their retrieval
rank) whose gold retrieval found, it compares the ranker's first candidate with
retrieval's first (rank 1) and counts the four cases (both right, only retrieval, only
the ranker, neither), then lists the queries of the two disagreeing cases with the
mention, each side's pick and the gold's retrieval rank::

    python benchmarks/ranker_vs_retrieval.py MODEL_DIR TASK_DIR [--split test] [--show 25]

A ranker stands above its retrieval by (only the ranker − only retrieval) / queries.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import torch

from kfacel.linking.evaluate import predict
from kfacel.linking.linker import load_linker
from kfacel.tasks.directory import load_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("task")
    p.add_argument("--split", default="test", choices=("dev", "test"))
    p.add_argument("--show", type=int, default=25, help="queries listed per case")
    args = p.parse_args()
    torch.set_num_threads(1)
    queries = getattr(load_task(args.task), args.split)
    linker = load_linker(args.model)
    parts = predict(linker.model, linker.batches(queries, 64))
    rows = [row for part in parts for row in part.tolist()]
    cases: Counter[str] = Counter()
    shown: dict[str, list[str]] = defaultdict(list)
    for q, row in zip(queries, rows, strict=True):
        if not q.retrieved:
            cases["gold not retrieved"] += 1
            continue
        cands = q.candidates
        ranked = max(range(len(cands)), key=lambda i: row[i])
        first = next(i for i, c in enumerate(cands) if c.rank == 1)
        gold = next(c for c in cands if c.id == q.gold)
        case = {
            (True, True): "both right",
            (True, False): "only retrieval right",
            (False, True): "only the ranker right",
            (False, False): "both wrong",
        }[cands[first].id == q.gold, cands[ranked].id == q.gold]
        cases[case] += 1
        shown[case].append(
            f"  {q.mention!r}: retrieval {cands[first].text!r} | ranker "
            f"{cands[ranked].text!r} | gold {gold.text!r} (rank {gold.rank})"
        )
    print(f"{args.split}: {len(queries)} queries; " + ", ".join(
        f"{k} {v}" for k, v in sorted(cases.items())
    ))  # fmt: skip
    for case in ("only retrieval right", "only the ranker right"):
        print(f"{case} ({cases[case]}):")
        print("\n".join(shown[case][: args.show]))


if __name__ == "__main__":
    main()
