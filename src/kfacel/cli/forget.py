"""``kfacel forget``: a new model directory that no longer knows a consolidated task."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kfacel.cli import UserError
from kfacel.cli._args import positive_float
from kfacel.cli._choices import DEFAULT_FORGET_ALPHA, DEFAULT_FORGET_LAM, FORGET_METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``forget`` subcommand."""
    p = subparsers.add_parser(
        "forget",
        help="forget a consolidated task by selective synaptic dampening (no data read)",
    )
    p.add_argument("model_dir", help="model directory holding the task's state")
    p.add_argument("--task", required=True, help="name of the task to forget")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it is an existing kfacel model directory",
    )
    p.add_argument(
        "--method",
        choices=FORGET_METHODS,
        default="kfac-ssd",
        help="kfac-ssd: dampen in each layer's K-FAC eigenbasis of the task; ssd: "
        "dampen parameters (the Fisher diagonal)",
    )
    p.add_argument(
        "--alpha",
        type=positive_float,
        default=DEFAULT_FORGET_ALPHA,
        help="dampen a coordinate whose importance to the task exceeds alpha times "
        "its importance to the retained tasks",
    )
    p.add_argument(
        "--lam",
        type=positive_float,
        default=DEFAULT_FORGET_LAM,
        help="scale a dampened coordinate by min(lam · retained / forgotten, 1)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dampen, drop the task's state and links, write ``--out``; prints a JSON summary."""
    from kfacel._lock import write_lock
    from kfacel.consolidation import load_state
    from kfacel.linking.forget import forget_linker
    from kfacel.linking.linker import load_linker, save_linker
    from kfacel.models import is_model_dir, replaceable_model_dir

    out = _check_out(args)  # before any work
    with write_lock(out, "forget"):
        _check_out(args)  # again: another writer may have finished meanwhile
        replace = replaceable_model_dir if is_model_dir(out) else None
        start = time.perf_counter()
        linker = load_linker(args.model_dir)
        states = load_state(args.model_dir, linker.model)
        kept, record = forget_linker(
            linker, states, args.task, method=args.method, alpha=args.alpha,
            lam=args.lam,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        save_linker(linker, out, states=kept, replace=replace)
    print(json.dumps({"out": args.out, **record, "seconds": round(seconds, 3)}))
    return 0


def _check_out(args: argparse.Namespace) -> Path:
    """``--out`` resolved, refused when writing it could lose what is not kfacel's."""
    from kfacel._io import check_output_dir
    from kfacel.models import foreign_entries, is_model_dir

    out = Path(args.out)
    if out.is_dir() and is_model_dir(out) and foreign_entries(out):
        raise UserError(
            f"--out {args.out} holds files kfacel did not write: move them, or "
            "choose another --out"
        )
    return check_output_dir(
        args.out,
        inputs={"MODEL_DIR": [args.model_dir]},
        own=is_model_dir,
        what="model directory",
        overwrite=args.overwrite,
    )
