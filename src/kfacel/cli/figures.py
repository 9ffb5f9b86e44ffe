"""``kfacel figures``: the paper's Figures 1 and 2 as PNG files (toy models)."""

from __future__ import annotations

import argparse
from pathlib import Path

FIGURES = ("figure1_toy_gaussians.png", "figure2_fisher.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``figures`` subcommand."""
    p = subparsers.add_parser(
        "figures",
        help="the paper's Figure 1 (2-parameter toy) and 2 (full/K-FAC/diagonal)",
    )
    p.add_argument("--out", default="figures", help="directory for the PNG files")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the figures already in --out"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the figures' random data"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write both figures and print their paths."""
    from kfacel._io import check_output_file
    from kfacel.experiments.figures import plot_toy_gaussians
    from kfacel.experiments.fisher_figure import plot_fisher_comparison

    out = Path(args.out)
    for name in FIGURES:  # before drawing either
        check_output_file(
            out / name, inputs={}, own=_is_png, what="figure",
            overwrite=args.overwrite, option="--out",
        )  # fmt: skip
    print(plot_toy_gaussians(out / FIGURES[0], seed=args.seed))
    print(plot_fisher_comparison(out / FIGURES[1], seed=args.seed))
    return 0


def _is_png(path: Path) -> bool:
    """Whether ``path`` is a PNG file (kfacel writes no other file of these names)."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False
