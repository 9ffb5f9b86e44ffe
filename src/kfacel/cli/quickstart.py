"""``kfacel quickstart``: the whole workflow on the demo tasks shipped in the package."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from kfacel.cli._args import finite_float, positive_int

DEFAULT_OUT = "quickstart-output"
"""Where the quickstart writes its report when no ``--out`` is named."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quickstart`` subcommand."""
    p = subparsers.add_parser(
        "quickstart",
        help="demo: three tasks in a row with no penalty, EWC and KFC (a few minutes on CPU)",
    )
    p.add_argument(
        "--out",
        help=f"report directory (default {DEFAULT_OUT}, where each run replaces the "
        "last quickstart's report; a directory that is not one is never replaced)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report in a --out you name when it is an earlier quickstart's",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=10, help="epochs per task (the paper's)"
    )
    p.add_argument(
        "--lam-ewc", type=finite_float, help="a fixed λ (default: the default budget)"
    )
    p.add_argument(
        "--lam-kfac", type=finite_float, help="a fixed λ (default: the default budget)"
    )
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=2,
        help="seeds to average over (--seed, --seed + 1, …): one demo task's forgetting "
        "is a few test queries, and one seed's numbers move with it",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument(
        "--jobs",
        type=positive_int,
        help="processes the seeds train in side by side, sharing the threads "
        "(default: one per seed, up to one per core; the numbers do not change)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run, print the table and write the report."""
    import torch

    from kfacel.demo import demo_tasks
    from kfacel.experiments.quickstart import format_table, run_quickstart, write_report

    out = _check_out(args)  # before the minutes of training
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tasks = demo_tasks()
    print(f"demo tasks: {', '.join(f'{t.name} ({len(t.train)} train)' for t in tasks)}")
    jobs = min(args.jobs or torch.get_num_threads(), args.seeds)  # no idle processes
    if jobs > 1:
        print(f"seeds {args.seed}–{args.seed + args.seeds - 1} in {jobs} processes")
    result = run_quickstart(
        tasks,
        lams={
            m: lam
            for m, lam in (("ewc", args.lam_ewc), ("kfac", args.lam_kfac))
            if lam is not None
        },
        epochs=args.epochs,
        seed=args.seed,
        seeds=args.seeds,
        jobs=jobs,
        progress=sys.stderr.isatty() and jobs == 1,
        log=print,
    )
    print()
    print(format_table(result))
    _check_out(args)  # again: something may have appeared there meanwhile
    written = write_report(result, out)
    print(f"\nreport: {written[-1]}  ({time.perf_counter() - start:.0f} s)")
    return 0


def _check_out(args: argparse.Namespace) -> Path:
    """``--out`` (default ``DEFAULT_OUT``), refused unless it is new or a quickstart's."""
    from kfacel._io import check_output_dir

    out = Path(args.out or DEFAULT_OUT)
    check_output_dir(
        out,
        inputs={},
        own=is_quickstart_dir,
        what="quickstart report directory",
        overwrite=args.overwrite or args.out is None,  # the demo's own place
    )
    return out


def is_quickstart_dir(directory: Path) -> bool:
    """Whether ``directory`` holds a quickstart report and nothing else.

    Its ``results.json`` has the fields ``QuickstartResult`` always had (those without
    a default: an earlier version's report is still recognized), and every entry is a
    JSON, Markdown, CSV or PNG file.
    """
    from kfacel.experiments.quickstart import QuickstartResult

    try:
        results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
        entries = list(directory.iterdir())
    except (OSError, ValueError):
        return False
    names = {
        f.name
        for f in fields(QuickstartResult)
        if f.default is MISSING and f.default_factory is MISSING
    }
    return (
        isinstance(results, dict)
        and names <= results.keys()
        and all(
            p.is_file() and p.suffix in (".json", ".md", ".csv", ".png")
            for p in entries
        )
    )
