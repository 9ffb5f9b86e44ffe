"""Optional: start a run directory with the finished cells of an earlier run copied in.

An experiment is its config (``configs/*.toml``); this only saves time. A variant that
changes only how the new task is trained (optimizer, clipping, learning rate, λ or budget
grid) shares the tier-1 models of an earlier run with the same settings and, unless the
curvature settings change, its consolidation states: those cells (and any named by
``--copy``) are copied instead of retrained, and the new run's ``env.json`` says which
cells were copied from where. Then run the experiment as usual; it skips the copied
cells. Each config under ``configs/forgetting/`` and ``configs/transformer/`` names the
earlier run it shares cells with.

    python benchmarks/fork_run.py SRC DST CONFIG [--arm NAME] [--states] [--copy GLOB ...]
        [--set …]
    kfacel experiment CONFIG [--out DST] --jobs 2

e.g. ``python benchmarks/fork_run.py runs/forgetting-wide-six runs/forgetting-factored-six
configs/forgetting/factored-six.toml --states --copy 'tier2-*-none-*'``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

from kfacel._io import atomic_write_json
from kfacel.experiments.config import arm_names, load_config
from kfacel.experiments.rundir import open_run_dir, record_arms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("config")
    p.add_argument("--states", action="store_true", help="copy consolidations too")
    p.add_argument(
        "--copy",
        action="append",
        default=[],
        metavar="GLOB",
        help="more finished cells to copy, e.g. 'tier2-*-none-*' (plain fine-tuning)",
    )
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--arm", help="of a config with [arms.NAME] tables: this arm's run")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides, arm=args.arm)
    if args.arm:  # the armed run's top directory, as `kfacel experiment` records it
        record_arms(args.dst.parent, args.config, arm_names(args.config))
    open_run_dir(args.dst, cfg, jobs=1)
    tier1 = ("individual-", "combined-")  # the single-task and multi-task models
    kinds = (*tier1, "consolidate-") if args.states else tier1
    copied = []
    for cell in sorted((args.src / "cells").iterdir()):
        done = cell / "done.json"
        extra = any(fnmatch(cell.name, g) for g in args.copy)
        if not ((cell.name.startswith(kinds) or extra) and done.is_file()):
            continue
        if json.loads(done.read_text(encoding="utf-8")).get("status") == "ok":
            shutil.copytree(cell, args.dst / "cells" / cell.name)
            copied.append(cell.name)
    env_path = args.dst / "env.json"
    env = json.loads(env_path.read_text(encoding="utf-8"))
    env["copied_cells"] = {"from": str(args.src), "cells": copied}
    atomic_write_json(env_path, env, sort_keys=True)
    print(f"copied {len(copied)} cells from {args.src} into {args.dst}")


if __name__ == "__main__":
    main()
