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
    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME",
        help="of a config with [arms.NAME] tables: run only this arm (repeatable; "
        "default: every arm, one after another, each in OUT/NAME)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run or resume the config (each of its arms in turn); 1 if a cell failed."""
    from kfacel.experiments.config import ConfigError, arm_names
    from kfacel.experiments.rundir import record_arms

    try:
        arms = arm_names(args.config)
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if args.arm and not arms:
        raise UserError(f"--arm: {args.config} has no [arms.NAME] tables")
    if unknown := sorted(set(args.arm) - set(arms)):
        raise UserError(f"--arm {unknown[0]!r}: {args.config} has arms {list(arms)}")
    if args.jobs < 1:
        raise UserError("--jobs must be positive")
    chosen = [a for a in arms if a in args.arm] if args.arm else list(arms)
    configs = [_load(args, arm) for arm in chosen] if arms else [_load(args, None)]
    if arms:
        top = (
            args.out
            if args.out is not None
            else configs[0].output_dir.rsplit("/", 1)[0]
        )
        try:
            record_arms(Path(top), args.config, arms)
        except ConfigError as exc:
            raise UserError(str(exc)) from exc
    failed = 0
    names: list[str | None] = list(chosen) if arms else [None]
    for arm, cfg in zip(names, configs, strict=True):
        out = None if args.out is None else (Path(args.out) / arm if arm else args.out)
        try:
            failed += _run_one(args, cfg, out)
        except ConfigError as exc:
            raise UserError(str(exc)) from exc
    return 1 if failed else 0


def _load(args: argparse.Namespace, arm: str | None) -> ExperimentConfig:
    """One arm's config (or the config), with ``--set`` and ``--tiers`` applied."""
    from kfacel.experiments.config import load_config

    try:
        cfg = load_config(args.config, args.set, arm=arm)
        if args.tiers:
            items = [t.strip() for t in args.tiers.split(",") if t.strip()]
            if not items or not all(t in ("1", "2", "3") for t in items):
                raise UserError(f"--tiers {args.tiers!r}: expected e.g. 1,2 or 1,2,3")
            cfg = replace(cfg, tiers=tuple(int(t) for t in items))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        raise UserError(str(exc)) from exc
    _check_out(args, cfg)
    return cfg


def _run_one(args: argparse.Namespace, cfg: ExperimentConfig, out: Path | None) -> int:
    """Run one experiment into ``out`` and print what happened; the failed cells."""
    from kfacel.experiments.runner import run_experiment

    start = time.perf_counter()
    summary = run_experiment(
        cfg, out, jobs=args.jobs, log=lambda line: print(line, flush=True)
    )
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
    return len(summary.failed)


def _check_out(args: argparse.Namespace, cfg: ExperimentConfig) -> None:
    """Refuse a run directory that is, holds or lies in the config or a task."""
    from kfacel._io import check_inputs_apart

    out = args.out if args.out is not None else cfg.output_dir
    inputs = {"CONFIG": [args.config], "task": [t.path for t in cfg.tasks]}
    check_inputs_apart(Path(out).resolve(), out, inputs, "--out")
