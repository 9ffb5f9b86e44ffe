"""``kfacel report``: the paper's tables and figures of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

RUN_FILES = ("config.json", "env.json", "metrics.jsonl", "selection.json", "cells")
"""What ``report`` reads of a run directory: its report may not hold or lie in them."""
REPORT_SUFFIXES = (".md", ".csv", ".png", ".json")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report",
        help="write Markdown/CSV tables, PNG figures and results.json of a run directory",
    )
    p.add_argument(
        "run_dir",
        help="run directory of `kfacel experiment` (an armed one: each arm, in place)",
    )
    p.add_argument("--out", help="report directory (default: RUN_DIR/report)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report in --out (RUN_DIR/report is always rewritten)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print its paths."""
    from kfacel._io import check_output_dir
    from kfacel.experiments.report import write_report

    default = Path(args.run_dir) / "report"  # part of the run: rewritten each time
    if args.out is not None and Path(args.out).resolve() != default.resolve():
        check_output_dir(
            args.out,
            inputs={"RUN_DIR": [Path(args.run_dir) / name for name in RUN_FILES]},
            own=is_report_dir,
            what="report directory",
            overwrite=args.overwrite,
        )
    written = write_report(args.run_dir, args.out)
    for path in written:
        print(path)
    return 0


def is_report_dir(directory: Path) -> bool:
    """Whether ``directory`` holds a report of this command and nothing else.

    Its ``report.md`` opens with the title this command writes, and every entry is a
    Markdown, CSV, PNG or JSON file.
    """
    try:
        with (directory / "report.md").open(encoding="utf-8") as fh:
            title = fh.readline()
        entries = list(directory.iterdir())
    except (OSError, ValueError):
        return False
    return title.startswith("# Run ") and all(
        p.is_file() and p.suffix in REPORT_SUFFIXES for p in entries
    )
