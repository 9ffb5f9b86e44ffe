"""``kfacel report``: the paper's tables and figures of a run directory."""

from __future__ import annotations

import argparse

from kfacel.experiments.report import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report", help="write Markdown/CSV tables and PNG figures of a run directory"
    )
    p.add_argument("run_dir", help="run directory of `kfacel experiment`")
    p.add_argument("--out", help="report directory (default: RUN_DIR/report)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print its paths."""
    written = write_report(args.run_dir, args.out)
    for path in written:
        print(path)
    return 0
