"""``kfacel experiment``: the paper's protocol (tiers 1–3) from a TOML config."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kfacel.cli import UserError

if TYPE_CHECKING:
    from kfacel.experiments.config import ExperimentConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``experiment`` subcommand."""
    p = subparsers.add_parser(
        "experiment",
        help="run the paper's protocol from a config into a run directory (resumable)",
    )
    p.add_argument("config", help="TOML config, e.g. configs/paper-cnn-small.toml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.epochs=1 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: the config's output_dir)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="cells run in parallel processes (torch threads: cores // N each)",
    )
    p.add_argument(
        "--tiers", help="comma-separated tiers to run, e.g. 1,2 (default: config)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, run or resume it, print what happened; 1 if a cell failed."""
    from kfacel.experiments.config import ConfigError, load_config
    from kfacel.experiments.runner import run_experiment

    try:
        cfg = load_config(args.config, args.set)
        if args.tiers:
            items = [t.strip() for t in args.tiers.split(",") if t.strip()]
            if not items or not all(t in ("1", "2", "3") for t in items):
                raise UserError(f"--tiers {args.tiers!r}: expected e.g. 1,2 or 1,2,3")
            cfg = replace(cfg, tiers=tuple(int(t) for t in items))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        raise UserError(str(exc)) from exc
    if args.jobs < 1:
        raise UserError("--jobs must be positive")
    _check_out(args, cfg)
    start = time.perf_counter()
    try:
        summary = run_experiment(
            cfg, args.out, jobs=args.jobs, log=lambda line: print(line, flush=True)
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    print(
        f"run {summary.run_dir}: {len(summary.ran)} cells run, "
        f"{len(summary.skipped)} done before, {len(summary.failed)} failed "
        f"({time.perf_counter() - start:.0f} s); next: kfacel report {summary.run_dir}"
    )
    print(
        "wall time per stage: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in summary.seconds.items())
    )
    for cell, message in summary.failed:
        print(f"failed: {cell}: {message}")
    for line in summary.left_out:
        print(f"left out: {line}")
    return 1 if summary.failed else 0


def _check_out(args: argparse.Namespace, cfg: ExperimentConfig) -> None:
    """Refuse a run directory that is, holds or lies in the config or a task."""
    from kfacel._io import check_inputs_apart

    out = args.out if args.out is not None else cfg.output_dir
    inputs = {"CONFIG": [args.config], "task": [t.path for t in cfg.tasks]}
    check_inputs_apart(Path(out).resolve(), out, inputs, "--out")
