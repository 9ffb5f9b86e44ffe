"""``kfacel figures``: the paper's Figures 1 and 2 as PNG files (toy models)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kfacel.experiments.figures import plot_toy_gaussians
from kfacel.experiments.fisher_figure import plot_fisher_comparison


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``figures`` subcommand."""
    p = subparsers.add_parser(
        "figures",
        help="the paper's Figure 1 (2-parameter toy) and 2 (full/K-FAC/diagonal)",
    )
    p.add_argument("--out", default="figures", help="directory for the PNG files")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write both figures and print their paths."""
    out = Path(args.out)
    print(plot_toy_gaussians(out / "figure1_toy_gaussians.png", seed=args.seed))
    print(plot_fisher_comparison(out / "figure2_fisher.png", seed=args.seed))
    return 0
