r"""Does bfloat16 autocast keep a ranker's accuracy on the CPU? float32 against bfloat16.

For each seed, the same ``kfacel train`` runs in float32 and in bfloat16 (alternated, so
both see the same load), then ``kfacel evaluate`` on the test split in the training
precision. Prints, per run and as the mean ± standard deviation over seeds: dev acc@1
(the chosen epoch's), test acc@1 and training queries/s (the trainer's own wall-clock
count, dev evaluation excluded), and the bfloat16 / float32 speed ratio of each seed.
Runs go under ``--out`` (a model directory and a result file each); a run whose result
file is there is not run again, so runs can be split over processes (``--precisions``,
``--seeds``) started side by side, and a last call prints the summary of them all.

Usage (the transformer: about 3 minutes a run on one thread)::

    python benchmarks/precision_seeds.py --task tasks/public3-small/ncbi \
        --model transformer --seeds 0,1,2 --out runs/precision \
        -- --max-train 1500 --epochs 1 --batch-size 16 --lr 2e-4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PRECISIONS = ("float32", "bfloat16")


def kfacel(*args: str) -> str:
    """Run ``python -m kfacel args``; its stdout."""
    cmd = [sys.executable, "-m", "kfacel", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def one_run(
    task: str, model: str, seed: int, precision: str, out: Path, extra: list[str]
) -> dict:
    """Train and evaluate once; dev and test acc@1 and training queries/s."""
    done = out / f"run-{model}-{precision}-seed{seed}.json"
    if done.exists():
        return json.loads(done.read_text())
    model_dir = out / f"{model}-{precision}-seed{seed}"
    common = ["--precision", precision]
    log = model_dir / "train_log.json"  # a finished training is not run again
    if not log.exists():
        kfacel(
            "train",
            "--task",
            task,
            "--model",
            model,
            "--seed",
            str(seed),
            "--out",
            str(model_dir),
            "--overwrite",
            *common,
            *extra,
        )
    summary = json.loads(log.read_text())
    result = out / f"test-{model}-{precision}-seed{seed}.json"
    threads = extra[extra.index("--threads") :][:2] if "--threads" in extra else []
    kfacel(
        "evaluate",
        str(model_dir),
        "--task",
        task,
        "--output",
        str(result),
        "--overwrite",
        *common,
        *threads,
    )
    test = json.loads(result.read_text())
    run = {
        "precision": precision,
        "seed": seed,
        "dev": summary["best_dev_accuracy"],
        "test": _accuracy(test),
        "queries_per_s": summary["queries_per_s"],
    }
    done.write_text(json.dumps(run))
    return run


def _accuracy(evaluation: dict) -> float:
    """acc@1 of the one task of an ``evaluate --output`` file."""
    (task,) = evaluation.values()
    return float(task["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", default="transformer")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("extra", nargs="*", help="more `kfacel train` options after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        mine = [p for p in PRECISIONS if p in args.precisions.split(",")]
        order = mine if i % 2 == 0 else mine[::-1]
        for precision in order:
            runs.append(
                one_run(args.task, args.model, seed, precision, args.out, args.extra)
            )
            print(json.dumps(runs[-1]), flush=True)
    for precision in PRECISIONS:
        mine = [r for r in runs if r["precision"] == precision]
        if not mine:
            continue
        cells = []
        for key in ("dev", "test", "queries_per_s"):
            values = [r[key] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            scale = 1 if key == "queries_per_s" else 100
            cells.append(
                f"{key} {scale * statistics.mean(values):.2f} ± {scale * sd:.2f}"
            )
        print(f"{precision:<9} " + "  ".join(cells))
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["precision"]] = r["queries_per_s"]
    ratios = [s["bfloat16"] / s["float32"] for s in by_seed.values() if len(s) == 2]
    print(
        "bfloat16 / float32 queries/s per seed: "
        + ", ".join(f"{x:.2f}" for x in ratios)
    )


if __name__ == "__main__":
    main()
