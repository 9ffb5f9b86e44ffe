"""Forgetting a task on request: SSD on KFC's consolidation states, against retraining.

For each pair A → B: train A alone and consolidate it (K-FAC, the defaults), train B
from it with KFC (``--penalty kfac``: the default budget and damping) and consolidate
B; then forget A (``forget_linker``, what ``kfacel forget`` calls) with each method
over a grid of (α, λ). B trained alone (the same seed) is the model that never saw A:
the reference a regulator would accept. A setting is chosen per pair and method on the
dev splits only (the grid point whose A dev accuracy is nearest the reference's among
those that cost B at most 1 dev point), then reported on test: A's test accuracy, A's
train accuracy (a membership-style probe: does the model still fit A's training
mentions better than A's unseen ones?), B's test accuracy and the seconds the
forgetting took (in process, weights already loaded; and the whole ``kfacel forget``
command, loading and writing included).

The tasks are PUBLIC-3-small's with their training split cut to its first
``--train`` queries and their dev split to its first ``--dev`` (written under
``OUT/tasks``; test is whole), so that every model trains in minutes on a loaded CPU.

    nice -n 5 python benchmarks/forget_task.py --out runs/forget \
        --pairs medmentions>cadec,cadec>medmentions --seeds 0
    python benchmarks/forget_task.py --out runs/forget-whole --train 1000000 \
        --dev 1000000 --seeds 0,1,2          # the whole tasks
    python benchmarks/forget_task.py --out runs/forget-whole --table

Models are trained once and reused; results go to ``OUT/forget.json``, where the
results of other seeds and pairs are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kfacel.consolidation import load_state
from kfacel.linking.evaluate import evaluate_split
from kfacel.linking.forget import forget_linker
from kfacel.linking.linker import load_linker
from kfacel.tasks.directory import load_task

SOURCE = Path(__file__).resolve().parents[1] / "tasks/public3-small"
"""PUBLIC-3-small as ``kfacel prepare benchmark --small`` writes it in the repository."""
GRID = [
    (10.0, 1.0),
    (5.0, 1.0),
    (3.0, 1.0),
    (2.0, 1.0),
    (1.0, 1.0),
    (1.0, 0.3),
    (1.0, 0.1),
]
"""(α, λ) tried on dev: the paper's (10, 1), then stronger (β ≤ λ/α)."""
METHODS = ("ssd", "kfac-ssd")


def kfacel(*args: str) -> float:
    """Run one ``kfacel`` command, stopping on failure; returns its wall seconds."""
    cmd = [sys.executable, "-m", "kfacel", "-q", *args]
    print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def small_task(out: Path, name: str, train: int, dev: int) -> Path:
    """PUBLIC-3-small's task with its train and dev splits cut short (made once)."""
    task = out / "tasks" / name
    if (task / "test.jsonl").is_file():
        return task
    task.mkdir(parents=True, exist_ok=True)
    for f in ("task.json", "dictionary.jsonl.gz"):
        shutil.copyfile(SOURCE / name / f, task / f)
    for split, n in (("train", train), ("dev", dev)):
        lines = (SOURCE / name / f"{split}.jsonl").read_text().splitlines(True)
        (task / f"{split}.jsonl").write_text("".join(lines[:n]))
    shutil.copyfile(SOURCE / name / "test.jsonl", task / "test.jsonl")
    return task


def trained(out: Path, task: Path, seed: int, init: Path | None = None) -> Path:
    """A model trained on ``task`` (from ``init`` with KFC) and consolidated; reused."""
    name = task.name if init is None else f"{init.name}>{task.name}"
    model = out / f"seed{seed}" / name
    if (model / "consolidation").is_dir():
        return model
    extra = ["--init", str(init), "--penalty", "kfac"] if init is not None else []
    kfacel(
        "train", "--task", str(task), "--out", str(model), "--epochs", "3",
        "--seed", str(seed), "--overwrite", *extra,
    )  # fmt: skip
    kfacel("consolidate", str(model), "--task", str(task))
    return model


def accuracies(linker, tasks: dict[str, Any], which: list[tuple[str, str]]) -> dict:
    """Accuracy@1 (%) of ``linker`` on each (task, split)."""
    return {
        f"{t}/{s}": 100 * evaluate_split(linker, tasks[t].split(s)).accuracy
        for t, s in which
    }


def forgotten(model: Path, task: str, method: str, alpha: float, lam: float):
    """The linker of ``model`` with ``task`` forgotten, and the seconds it took."""
    linker = load_linker(model)
    states = load_state(model, linker.model)
    start = time.perf_counter()
    forget_linker(linker, states, task, method=method, alpha=alpha, lam=lam)
    return linker, time.perf_counter() - start


def choose(grid: list[dict], reference: float, before_b: float) -> dict:
    """The dev grid point nearest the reference on A within 1 point of B's cost."""
    ok = [g for g in grid if g["dev"]["b"] >= before_b - 1.0] or grid
    return min(ok, key=lambda g: abs(g["dev"]["a"] - reference))


def measure(
    out: Path, chain: tuple[str, ...], seed: int, tasks: dict, grid_points: list
) -> dict:
    """Before, reference, and each method's dev grid and chosen test numbers.

    ``chain`` is A → B (→ C ...): A is forgotten, the rest are kept; the reference is
    the same chain without A. A grid point's ``b`` is the kept tasks' mean accuracy.
    """
    a, kept = chain[0], chain[1:]
    name = ">".join(chain)
    both = load_linker(out / f"seed{seed}" / name)
    alone = load_linker(out / f"seed{seed}" / ">".join(kept))
    tests = [(a, "test"), (a, "train"), *((k, "test") for k in kept)]
    devs = [(a, "dev"), *((k, "dev") for k in kept)]
    result: dict[str, Any] = {
        "before": accuracies(both, tasks, tests + devs),
        "never_saw_a": accuracies(alone, tasks, tests + devs),
    }
    ref_a = result["never_saw_a"][f"{a}/dev"]
    before_b = _mean(result["before"], kept, "dev")
    model = out / f"seed{seed}" / name
    for method in METHODS:
        grid = []
        for alpha, lam in grid_points:
            linker, secs = forgotten(model, a, method, alpha, lam)
            acc = accuracies(linker, tasks, devs)
            dev = {"a": acc[f"{a}/dev"], "b": _mean(acc, kept, "dev")}
            grid.append({"alpha": alpha, "lam": lam, "dev": dev, "seconds": secs})
            print(method, alpha, lam, dev, round(secs, 2), file=sys.stderr, flush=True)
        best = choose(grid, ref_a, before_b)
        linker, secs = forgotten(model, a, method, best["alpha"], best["lam"])
        new = out / f"seed{seed}" / f"{name}-forget-{method}"
        cli = kfacel(
            "forget", str(model), "--task", a, "--out", str(new), "--overwrite",
            "--method", method, "--alpha", str(best["alpha"]), "--lam", str(best["lam"]),
        )  # fmt: skip
        result[method] = {
            "grid": grid,
            "chosen": {"alpha": best["alpha"], "lam": best["lam"]},
            "test": accuracies(linker, tasks, tests),
            "seconds": secs,
            "cli_seconds": cli,
        }
    return result


def _mean(acc: dict[str, float], tasks: tuple[str, ...], split: str) -> float:
    return sum(acc[f"{t}/{split}"] for t in tasks) / len(tasks)


def table(results: list[dict]) -> str:
    """The results as a Markdown table: test accuracy, mean (per seed), per chain."""
    lines = [
        "| A → kept | model | A test | A train | kept test | chosen (α, λ) |",
        "|---|---|---|---|---|---|",
    ]
    for pair in dict.fromkeys(r["pair"] for r in results):
        a, *kept = pair.split(">")
        runs = sorted(
            (r for r in results if r["pair"] == pair), key=lambda r: r["seed"]
        )
        for i, (key, label) in enumerate(ROWS):
            found = [r[key] for r in runs]
            accs = [f.get("test", f) for f in found]  # a method's numbers are in "test"
            cells = [
                _cell(accs, (a,), "test"),
                _cell(accs, (a,), "train"),
                _cell(accs, tuple(kept), "test"),
            ]
            chosen = [f.get("chosen") for f in found]
            picked = ", ".join(f"({c['alpha']:g}, {c['lam']:g})" for c in chosen if c)
            first = pair.replace(">", " → ") if i == 0 else ""
            lines.append(f"| {first} | {label} | {' | '.join(cells)} | {picked} |")
    return "\n".join(lines)


def _cell(accs: list[dict], tasks: tuple[str, ...], split: str) -> str:
    """Mean over seeds (each seed's in brackets) of ``tasks``' mean accuracy."""
    values = [_mean(x, tasks, split) for x in accs]
    each = ", ".join(f"{v:.1f}" for v in values)
    return f"{sum(values) / len(values):.1f} ({each})"


ROWS = [
    ("before", "before forgetting"),
    ("never_saw_a", "never saw A (reference)"),
    *((m, f"`{m}`") for m in METHODS),
]


def main() -> None:
    """Train what is missing, then forget and measure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/forget"))
    p.add_argument("--pairs", default="medmentions>cadec,cadec>medmentions")
    p.add_argument("--seeds", default="0")
    p.add_argument("--train", type=int, default=1200, help="training queries a task")
    p.add_argument("--dev", type=int, default=500, help="dev queries a task")
    p.add_argument(
        "--grid", nargs="+", help="(α, λ) points as α,λ (default: GRID)", default=None
    )
    p.add_argument("--table", action="store_true", help="print OUT's results, run none")
    args = p.parse_args()
    file = args.out / "forget.json"
    if args.table:
        print(table(json.loads(file.read_text())))
        return
    chains = [tuple(x.split(">")) for x in args.pairs.split(",")]
    grid = [tuple(map(float, g.split(","))) for g in args.grid] if args.grid else GRID
    names = sorted({n for chain in chains for n in chain})
    paths = {n: small_task(args.out, n, args.train, args.dev) for n in names}
    tasks = {n: load_task(paths[n]) for n in names}
    results = json.loads(file.read_text()) if file.exists() else []  # other seeds kept
    for seed in [int(s) for s in args.seeds.split(",")]:
        for chain in chains:
            for start in (0, 1):  # the chain, and the reference without its first
                model = None
                for name in chain[start:]:
                    model = trained(args.out, paths[name], seed, init=model)
        for chain in chains:
            r = measure(args.out, chain, seed, tasks, grid)
            key = ">".join(chain)
            results = [x for x in results if (x["pair"], x["seed"]) != (key, seed)]
            results.append({"pair": key, "seed": seed, **r})
            file.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
