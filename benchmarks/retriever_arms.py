"""Recall of each retrieval channel and of the fusion, per task, across prepared arms.

Each arm is a directory of tasks prepared alike but for the retriever (``kfacel prepare
benchmark … --out ARM [--retriever-init DIR] [--retriever-epochs N]``); ``prepare``
records each channel's recall@k in ``task.json``. Prints one markdown table per task:
the dense channel's and the fusion's recall@1/5/32 on test, and the fusion's recall@1
on dev (what a choice between arms may read).

    python benchmarks/retriever_arms.py runs/aligned/shipped runs/aligned/aligned \
        runs/aligned/tuned runs/aligned/aligned-tuned
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _recalls(stats: dict[str, float]) -> str:
    return " / ".join(f"{100 * stats[f'recall@{k}']:.1f}" for k in (1, 5, 32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arms", nargs="+", type=Path, help="directories of prepared tasks")
    p.add_argument("--tasks", default="ncbi,cadec,medmentions")
    args = p.parse_args()
    for task in args.tasks.split(","):
        rows = []
        for arm in args.arms:
            path = arm / task / "task.json"
            if not path.is_file():
                continue
            info = json.loads(path.read_text(encoding="utf-8"))
            dense = info["channels"]["test"]["dense"]
            fused, dev = info["generator"]["test"], info["generator"]["dev"]
            rows.append(
                f"| {arm.name} | {_recalls(dense)} | {_recalls(fused)} | "
                f"{100 * dev['recall@1']:.1f} |"
            )
        if rows:
            print(f"\n{task} (test recall@1 / 5 / 32, %)\n")
            print("| retriever | dense | fused | fused r@1, dev |")
            print("|---|---:|---:|---:|")
            print("\n".join(rows))


if __name__ == "__main__":
    main()
