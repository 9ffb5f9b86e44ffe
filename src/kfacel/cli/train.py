"""``kfacel train``: train a ranker on one task and write its model directory."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from kfacel.cli import UserError
from kfacel.data.tasks import load_task
from kfacel.training.pipeline import fit_task, new_linker, save_linker

DEFAULT_LR = {"cnn": 1e-3, "transformer": 1e-4}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser("train", help="train a ranker on one task")
    p.add_argument("--task", required=True, help="task directory")
    p.add_argument("--model", choices=("cnn", "transformer"), default="cnn")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, help="default 1e-3 (cnn), 1e-4 (transformer)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--encoder", help="local checkpoint dir (default: MiniLM package)")
    p.add_argument("--layers", type=int, default=3, help="transformer layers to keep")
    p.add_argument("--hidden", type=int, help="CNN channels / encoding width")
    p.add_argument("--max-length", type=int, default=64, help="mention-in-context")
    p.add_argument("--max-train", type=int, help="use only the first N train queries")
    p.add_argument("--no-features", action="store_true", help="no string features")
    p.add_argument("--no-types", action="store_true", help="no candidate types")
    # Continual learning (--init MODEL_DIR, --penalty kfac|ewc|l2, --lam λ) goes here:
    # it loads the linker with load_linker(init) and passes penalty= to fit_task.
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train and write the model directory; prints the training summary as JSON."""
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError("--epochs and --batch-size must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    task = load_task(args.task)
    extra = {"hidden": args.hidden} if args.hidden else {}
    linker = new_linker(
        args.model,
        task.train,
        encoder=args.encoder,
        layers=args.layers,
        features=not args.no_features,
        types=not args.no_types,
        max_mention_length=args.max_length,
        **extra,
    )
    log = fit_task(
        linker,
        task,
        epochs=args.epochs,
        lr=args.lr if args.lr is not None else DEFAULT_LR[args.model],
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        progress=sys.stderr.isatty(),
        max_train=args.max_train,
    )
    save_linker(linker, args.out, log=log)
    summary = {k: v for k, v in log.to_json().items() if k != "epochs"}
    print(json.dumps({"task": task.name, "out": args.out, **summary}))
    return 0
