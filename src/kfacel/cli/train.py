"""``kfacel train``: train a ranker on one task and write its model directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from kfacel.cli import UserError
from kfacel.consolidation import build_penalty, copy_states, load_state
from kfacel.data.tasks import load_task
from kfacel.models import read_model_config
from kfacel.training.continual import discriminative_lr_groups
from kfacel.training.pipeline import fit_task, load_linker, new_linker, save_linker

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
    p.add_argument(
        "--schedule",
        choices=("constant", "linear"),
        default="constant",
        help="learning rate: constant, or linear warm-up then linear decay to 0",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the training steps to warm up over (--schedule linear)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--encoder", help="local checkpoint dir (default: MiniLM package)")
    p.add_argument("--layers", type=int, default=3, help="transformer layers to keep")
    p.add_argument("--hidden", type=int, help="CNN channels / encoding width")
    p.add_argument(
        "--dropout",
        type=float,
        help="CNN: on embeddings and scorer; transformer: on the scorer (default 0.1)",
    )
    p.add_argument("--max-length", type=int, default=64, help="mention-in-context")
    p.add_argument("--max-train", type=int, help="use only the first N train queries")
    p.add_argument("--no-features", action="store_true", help="no string features")
    p.add_argument("--no-types", action="store_true", help="no candidate types")
    p.add_argument(
        "--aliases",
        action="store_true",
        help="alias/prior features from the training links (stored in the model dir)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    g = p.add_argument_group(
        "continual learning (no old data is read, except --replay)"
    )
    g.add_argument(
        "--init", help="model directory to continue from (its consolidated tasks)"
    )
    g.add_argument("--penalty", choices=("none", "l2", "ewc", "kfac"), default="none")
    g.add_argument("--lam", type=float, help="λ for every consolidated task")
    g.add_argument("--lam-per-task", help="λ per consolidated task, e.g. A=1e3,B=1e5")
    g.add_argument(
        "--damping",
        type=float,
        default=0.0,
        help="δ added to the Fisher (prior precision)",
    )
    g.add_argument(
        "--lrc",
        type=float,
        metavar="GAMMA",
        help="discriminative learning rates: η_ℓ = η_(ℓ+1)·γ from the top layer down",
    )
    g.add_argument(
        "--replay",
        action="append",
        default=[],
        metavar="TASK_DIR",
        help="experience replay from an earlier task (a reference: needs old data)",
    )
    g.add_argument("--replay-every", type=int, default=4, metavar="M")
    g.add_argument("--replay-batches", type=int, default=1, metavar="N")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train and write the model directory; prints the training summary as JSON."""
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError("--epochs and --batch-size must be positive")
    if not 0.0 <= args.warmup < 1.0:
        raise UserError(
            f"--warmup is a share of the steps in [0, 1), got {args.warmup}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    task = load_task(args.task)
    if args.init:
        if Path(args.out).resolve() == Path(args.init).resolve():
            raise UserError(
                "--out must differ from --init: the old model is kept as it is"
            )
        linker = load_linker(args.init)
        states = load_state(args.init, linker.model)
        model_name = read_model_config(args.init)["model"]
    else:
        extra: dict[str, Any] = {"hidden": args.hidden} if args.hidden else {}
        if args.dropout is not None:
            if not 0.0 <= args.dropout < 1.0:
                raise UserError(f"--dropout must be in [0, 1), got {args.dropout}")
            extra["dropout"] = args.dropout
        linker = new_linker(
            args.model,
            task.train,
            encoder=args.encoder,
            layers=args.layers,
            features=not args.no_features,
            types=not args.no_types,
            aliases=args.aliases,
            max_mention_length=args.max_length,
            seed=args.seed,
            **extra,
        )
        states, model_name = (), args.model
    lams = _lams(args, [s.task for s in states])
    penalty = build_penalty(args.penalty, states, lams, damping=args.damping)
    lr = args.lr if args.lr is not None else DEFAULT_LR.get(model_name, 1e-3)
    groups = discriminative_lr_groups(linker.model, lr, args.lrc) if args.lrc else None
    replay = [ex for d in args.replay for ex in load_task(d).train]
    log = fit_task(
        linker,
        task,
        epochs=args.epochs,
        lr=lr,
        schedule=args.schedule,
        warmup=args.warmup,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        progress=sys.stderr.isatty(),
        max_train=args.max_train,
        penalty=penalty,
        lr_groups=groups,
        replay=replay,
        replay_every=args.replay_every,
        replay_n=args.replay_batches,
    )
    history = [*linker.meta.get("history", []), task.name]
    linker.meta |= {
        "history": history,
        "training": {
            "epochs": args.epochs,
            "lr": lr,
            "schedule": args.schedule,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "max_train": args.max_train,
        },
        "continual": {
            "init": args.init,
            "penalty": args.penalty,
            "lam": dict(zip([s.task for s in states], lams, strict=True)),
            "damping": args.damping,
            "lrc": args.lrc,
            "replay": args.replay,
        },
    }
    save_linker(linker, args.out, log=log)
    if args.init:
        copy_states(args.init, args.out)  # the next update needs no old data either
    summary = {k: v for k, v in log.to_json().items() if k != "epochs"}
    print(
        json.dumps({"task": task.name, "out": args.out, "history": history, **summary})
    )
    return 0


def _lams(args: argparse.Namespace, tasks: list[str]) -> list[float]:
    """λ for each consolidated task, from ``--lam`` or ``--lam-per-task``."""
    if args.penalty == "none":
        return [0.0] * len(tasks)
    if not tasks:
        raise UserError(
            f"--penalty {args.penalty} needs --init MODEL_DIR with a consolidated task "
            "(run `kfacel consolidate` first)"
        )
    per_task: dict[str, float] = {}
    for item in filter(None, (args.lam_per_task or "").split(",")):
        name, sep, value = item.partition("=")
        try:
            per_task[name.strip()] = float(value)
        except ValueError:
            raise UserError(
                f"--lam-per-task: cannot read {item!r} (want NAME=VALUE)"
            ) from None
        if not sep:
            raise UserError(f"--lam-per-task: cannot read {item!r} (want NAME=VALUE)")
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise UserError(
            f"--lam-per-task names {unknown}; consolidated tasks are {tasks}"
        )
    missing = [t for t in tasks if t not in per_task and args.lam is None]
    if missing:
        raise UserError(
            f"no λ for consolidated task(s) {missing}: give --lam or --lam-per-task"
        )
    lams = [per_task.get(t, args.lam) for t in tasks]
    if any(lam is None or lam < 0 or lam != lam for lam in lams):
        raise UserError("λ must be a non-negative number")
    return [float(lam) for lam in lams]  # type: ignore[arg-type]
