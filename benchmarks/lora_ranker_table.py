"""The LoRA comparison on the transformer ranker's protocol, as a table, from its runs.

Reads the cells of ``configs/transformer/lora.toml``'s arms (one run directory per seed,
``TOP/ARM/cells/*/done.json``) and prints, per family and method, the test accuracy of
NCBI alone, of NCBI after CADEC and of CADEC, the share of plain training's forgetting
removed (against plain training of the same family, ``metrics.reduction``), and what
each method keeps of NCBI: the consolidation state's bytes, O-LoRA's subspaces, or
I-LoRA's memory of NCBI's training queries (old data). Mean [95% t interval] over the
seeds found, and each seed's values.

    python benchmarks/lora_ranker_table.py runs/transformer-lora runs/transformer-lora-s1 \
        runs/transformer-lora-s2 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kfacel.experiments.metrics import mean_interval, reduction
from kfacel.experiments.sweep import choose

TOLERANCE = 2.0
"""``penalty.new_task_tolerance`` of the config: points of CADEC dev accuracy."""

ROWS = [  # (arm, method, label, what is kept of NCBI)
    ("full", "none", "full fine-tuning", "nothing"),
    ("full", "kfac-budget", "full fine-tuning, KFC", "state"),
    ("lora", "none", "LoRA", "nothing"),
    ("lora", "kfac-budget", "LoRA, KFC on the adapter", "state"),
    ("lora-lam", "kfac", "LoRA, KFC on the adapter, λ on dev", "state"),
    ("olora", "olora", "O-LoRA", "subspaces"),
    ("ilora", "ilora", "I-LoRA (replay)", "memory"),
]


def _cells(arm_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for done in sorted(arm_dir.glob("cells/*/done.json")):
        cell = json.loads(done.read_text(encoding="utf-8"))
        if cell.get("status") == "ok":
            out[cell["id"]] = cell
    return out


def _test(cell: dict[str, Any], task: str) -> float:
    (acc,) = [
        r["accuracy"]
        for r in cell["records"]
        if r["split"] == "test" and r["task"] == task
    ]
    return float(acc)


def _kept(arm_dir: Path, method: str, seed: int, rank: int = 8) -> int | None:
    """Bytes a method keeps of NCBI (None: nothing, or not found)."""
    if method in ("kfac-budget", "kfac"):
        states = arm_dir / "cells" / f"consolidate-ncbi-kfac-s{seed}" / "consolidation"
        return sum(p.stat().st_size for p in states.glob("*")) or None
    if method == "olora":  # A of rank r on 3 layers' query and value, 384 inputs, fp32
        return rank * 384 * 3 * 2 * 4
    return None


EXTENDS = {"lora-lam": ("lora-lam-low",)}
"""Arms whose λ grid extends another's: their cells count as the other's."""


def _arm_cells(top: Path, arm: str) -> dict[str, dict[str, Any]]:
    cells = _cells(top / arm)
    for more in EXTENDS.get(arm, ()):
        cells |= _cells(top / more)
    return cells


def chosen_lam(tops: Sequence[Path], arm: str) -> float | None:
    """λ of ``arm``'s ``kfac`` cells by the paper's dev rule, seeds averaged."""
    records = [
        r
        for top in tops
        for c in _arm_cells(top, arm).values()
        if c["kind"] == "tier2"
        for r in c["records"]
    ]
    chosen = choose(records, tier=2, tolerance=TOLERANCE)
    lam = chosen.get((("ncbi", "cadec"), "kfac"))
    return None if lam is None else float(lam)


def seed_rows(
    top: Path, arm: str, method: str, lam: float | None = None
) -> list[dict[str, Any]]:
    """The values of one row at each seed whose cells are all in ``top``."""
    plain_arm = "lora" if arm in ("olora", "ilora") else arm
    cells = {**_cells(top / plain_arm), **_arm_cells(top, arm)}
    lam = "-0.005" if method == "kfac-budget" else (f"-{lam:.3g}" if lam else "")
    rows = []
    for seed in sorted({int(c["seed"]) for c in cells.values()}):
        alone = cells.get(f"individual-ncbi-none-s{seed}")
        want = cells.get(f"tier2-ncbi-cadec-{method}{lam}-s{seed}")
        plain = cells.get(f"tier2-ncbi-cadec-none-s{seed}")
        if alone is None or want is None or plain is None:
            continue
        ncbi, after = _test(alone, "ncbi"), _test(want, "ncbi")
        removed = reduction(after, _test(plain, "ncbi"), ncbi)
        rows.append({
            "seed": seed,
            "ncbi_alone": ncbi,
            "ncbi_after": after,
            "cadec": _test(want, "cadec"),
            "removed": None if method == "none" else removed,
            "kept_bytes": _kept(top / arm, method, seed),
        })  # fmt: skip
    return rows


def _cell(values: Sequence[float | None], digits: int = 1) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "–"
    if len(xs) < 2:
        return f"{xs[0]:.{digits}f}"
    mean, _, lo, hi = mean_interval(xs)
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tops", nargs="+", type=Path, help="one run directory per seed")
    p.add_argument("--json", type=Path, help="write the per-seed values here")
    args = p.parse_args()
    table, raw = [], {}
    for arm, method, label, _ in ROWS:
        lam = chosen_lam(args.tops, arm) if method == "kfac" else None
        if method == "kfac" and lam is None:
            continue
        if lam is not None:
            label = f"{label} ({lam:g})"
        found = [r for t in args.tops for r in seed_rows(t, arm, method, lam)]
        seeds = sorted({r["seed"]: r for r in found}.values(), key=lambda r: r["seed"])
        raw[label] = seeds
        if not seeds:
            continue
        table.append(
            f"| {label} | {', '.join(str(s['seed']) for s in seeds)} | "
            f"{_cell([s['ncbi_alone'] for s in seeds])} | "
            f"{_cell([s['ncbi_after'] for s in seeds])} | "
            f"{_cell([s['cadec'] for s in seeds])} | "
            f"{_cell([s['removed'] for s in seeds], 0)}{'%' if method != 'none' else ''} |"
        )
    print(
        "| method | seeds | NCBI alone | NCBI after CADEC | CADEC | forgetting removed |"
    )
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
