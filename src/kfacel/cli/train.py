"""``kfacel train``: train a ranker on one task and write its model directory."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfacel.cli import UserError
from kfacel.cli._args import (
    device,
    finite_float,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from kfacel.cli._choices import (
    DAMPING_KINDS,
    DEFAULT_BUDGET_RATE,
    DEFAULT_KFAC_DAMPING,
    OPTIMIZERS,
    PENALTIES,
    PRECISIONS,
)

if TYPE_CHECKING:
    from kfacel.consolidation import TaskState
    from kfacel.linking.linker import Linker
    from kfacel.tasks.directory import Task
    from kfacel.training.continual import ContinualSettings
    from kfacel.training.trainer import TrainLog, TrainSettings

DEFAULT_LR = {"cnn": 1e-3, "transformer": 1e-4}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser("train", help="train a ranker on one task")
    p.add_argument("--task", required=True, help="task directory")
    p.add_argument("--model", choices=("cnn", "transformer"), default="cnn")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it is an existing kfacel model directory",
    )
    _add_training_options(p)
    _add_model_options(p)
    _add_stability_options(p)
    _add_continual_options(p)
    _add_baseline_options(p)
    p.set_defaults(handler=run)


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """Options of training on the task."""
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument(
        "--lr", type=positive_float, help="default 1e-3 (cnn), 1e-4 (transformer)"
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--schedule",
        choices=("constant", "linear"),
        default="constant",
        help="learning rate: constant, or linear warm-up then linear decay to 0",
    )
    p.add_argument(
        "--warmup",
        type=finite_float,
        default=0.0,
        metavar="SHARE",
        help="share of the training steps to warm up over (--schedule linear)",
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adamw",
        help="adamw, or sgd with momentum 0.9 (give it a larger --lr, e.g. 0.03)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--max-length", type=positive_int, default=64, help="mention-in-context"
    )
    p.add_argument(
        "--max-train", type=positive_int, help="use only the first N train queries"
    )
    p.add_argument(
        "--train-candidates",
        type=positive_int,
        metavar="K",
        help="train on the gold and K-1 of each query's other candidates, drawn "
        "anew each step (faster; evaluation ranks all)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: float16 mixed precision on CUDA; on the CPU bfloat16 for the "
        "transformer where the CPU has bfloat16 units, else float32; bfloat16: "
        "autocast on either (the penalty's products too), weights and optimizer in "
        "float32 (faster on CPUs with bfloat16 units)",
    )
    p.add_argument("--no-features", action="store_true", help="no string features")
    p.add_argument("--no-types", action="store_true", help="no candidate types")
    p.add_argument(
        "--aliases",
        action=argparse.BooleanOptionalAction,
        help="alias/prior features from the training links (a retrieval task: every "
        "training mention of its aliases.json; stored in the model dir); default: on "
        "for a task whose candidates come from retrieval with an alias channel "
        "(fused, alias), off otherwise; --no-aliases: off (with --init: the model's)",
    )
    p.add_argument(
        "--threads", type=positive_int, help="CPU threads (default: torch's)"
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The ranker's size and what of it trains."""
    p.add_argument("--encoder", help="local checkpoint dir (default: MiniLM package)")
    p.add_argument(
        "--layers", type=positive_int, default=3, help="transformer layers to keep"
    )
    p.add_argument("--hidden", type=positive_int, help="CNN channels / encoding width")
    p.add_argument(
        "--lora-rank",
        type=nonnegative_int,
        default=0,
        metavar="R",
        help="transformer: freeze the encoder and train LoRA adapters of rank R on its "
        "attention queries and values (peft; a later --init task trains the same "
        "adapters); 0: every weight trains",
    )
    p.add_argument(
        "--dropout",
        type=finite_float,
        help="CNN: on embeddings and scorer; transformer: on the scorer (default 0.1)",
    )


def _add_stability_options(p: argparse.ArgumentParser) -> None:
    """Fine-tuning stability for pretrained encoders (``training.stability``)."""
    p.add_argument(
        "--freeze-layers",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="fine-tuning stability: the N lowest layers (embeddings, then transformer "
        "blocks) take no gradient on this task",
    )
    p.add_argument(
        "--reinit-top",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="fine-tuning stability: re-initialize the top N transformer blocks "
        "before training",
    )


def _add_continual_options(p: argparse.ArgumentParser) -> None:
    """Options of continuing from a consolidated model."""
    g = p.add_argument_group(
        "continual learning (no old data is read, except --replay)"
    )
    g.add_argument(
        "--init", help="model directory to continue from (its consolidated tasks)"
    )
    g.add_argument("--penalty", choices=PENALTIES, default="none")
    g.add_argument(
        "--lam",
        type=_lam,
        help="λ for every consolidated task, or `bayes` (λ_t = N_t / N_new)",
    )
    g.add_argument("--lam-per-task", help="λ per consolidated task, e.g. A=1e3,B=1e5")
    g.add_argument(
        "--budget-rate",
        type=positive_float,
        default=DEFAULT_BUDGET_RATE,
        metavar="ETA",
        help="dual rate of --budget per run: λ_t + 1 grows by at most about e^ETA over "
        f"the whole run, whatever --epochs (default {DEFAULT_BUDGET_RATE:g})",
    )
    g.add_argument(
        "--tolerance",
        type=finite_float,
        metavar="POINTS",
        help="take the largest λ whose new-task dev accuracy is within POINTS of plain "
        "fine-tuning's (trains once per λ tried; reads only the new task)",
    )
    g.add_argument(
        "--budget",
        metavar="EPS",
        help="forgetting budget: keep each old task's predicted loss rise ½ΔᵀFΔ ≤ ε "
        "nats (one value, or A=0.05,B=0.1); λ_t adapts by dual ascent",
    )
    g.add_argument(
        "--damping",
        type=finite_float,
        help="δ added to the Fisher (prior precision; default: "
        f"{DEFAULT_KFAC_DAMPING:g} for kfac, 0 for ewc and l2)",
    )
    g.add_argument(
        "--damping-kind",
        choices=DAMPING_KINDS,
        help="how --damping enters a kfac penalty: δ·I on each layer's block (uniform) "
        "or split between its two Kronecker factors by their traces (factored, "
        "the default for kfac)",
    )
    g.add_argument(
        "--lrc",
        type=positive_float,
        metavar="GAMMA",
        help="discriminative learning rates: η_ℓ = η_(ℓ+1)·γ from the top layer down",
    )
    g.add_argument(
        "--refresh",
        type=nonnegative_float,
        default=0.0,
        metavar="RHO",
        help="refresh learning (Wang et al. 2024): before each step, unlearn by RHO "
        "of an Adam step up the loss and penalty, then relearn from there "
        "(0: off; twice a step's cost)",
    )
    g.add_argument(
        "--refresh-temperature",
        type=nonnegative_float,
        default=0.0,
        metavar="T",
        help="Langevin noise of --refresh's unlearning move",
    )


def _add_baseline_options(p: argparse.ArgumentParser) -> None:
    """The baselines beside the penalties: replay, O-LoRA, I-LoRA."""
    g = p.add_argument_group(
        "baselines beside the penalties (--replay and --ilora read old data)"
    )
    g.add_argument(
        "--replay",
        action="append",
        default=[],
        metavar="TASK_DIR",
        help="experience replay from an earlier task (a reference: needs old data)",
    )
    g.add_argument("--replay-every", type=positive_int, default=4, metavar="M")
    g.add_argument("--replay-batches", type=positive_int, default=1, metavar="N")
    g.add_argument(
        "--olora",
        type=nonnegative_float,
        metavar="LAM",
        help="O-LoRA (Wang et al. 2023), a baseline for a LoRA ranker: --init's "
        "adapters are merged into its weights and a fresh adapter trains orthogonal "
        "to them, LAM·‖A_old A_newᵀ‖² added (the paper's LAM: 0.5)",
    )
    g.add_argument(
        "--ilora",
        action="store_true",
        help="I-LoRA (Ren et al. 2024), a reference that needs old data: --replay's "
        "queries are its memory, one batch each step with a consistency term to a "
        "slow learner (moving average), which is the model kept",
    )


def run(args: argparse.Namespace) -> int:
    """Train and write the model directory; prints the training summary as JSON."""
    from kfacel._lock import write_lock
    from kfacel.linking.linker import save_linker
    from kfacel.models import is_model_dir, replaceable_model_dir
    from kfacel.tasks.directory import load_task

    try:
        settings, continual = _settings(args), _continual_settings(args)
    except ValueError as exc:  # "field must be ...": name the option instead
        field, _, rest = str(exc).partition(" ")
        raise UserError(f"--{field.replace('_', '-')} {rest}") from None
    out = _check_out(args)  # before any work
    with write_lock(out, "train"):  # held from the check to the save
        _check_out(args)  # again: another writer may have finished meanwhile
        # only with --overwrite, and only a model directory of kfacel's files alone
        replace = replaceable_model_dir if is_model_dir(out) else None
        task = load_task(args.task)
        linker, log, states = _train(args, task, settings, continual)
        # the states go with the model: the next update reads no old data
        save_linker(linker, out, log=log, states=states, replace=replace)
    summary = {k: v for k, v in log.to_json().items() if k != "epochs"}
    head = {
        "task": task.name,
        "out": args.out,
        "history": linker.meta["history"],
        "aliases": linker.collator.aliases is not None,
    }
    print(json.dumps(head | summary))
    return 0


def _uses_aliases(option: bool | None, task: Task) -> bool:
    """Whether a new linker gets the alias/prior features (``--aliases``).

    ``option``: ``--aliases`` (True), ``--no-aliases`` (False) or neither (None): then
    on exactly when the task's candidates come from a retrieval method with an alias
    channel (``retrieval.methods.RETRIEVAL_METHODS``, ``task.json``'s
    ``candidates.method``), whose ranker is scored end to end.
    """
    from kfacel.retrieval.methods import RETRIEVAL_METHODS

    if option is not None:
        return option
    method = task.info.get("candidates", {}).get("method")
    return method in RETRIEVAL_METHODS


def _train(
    args: argparse.Namespace,
    task: Task,
    settings: TrainSettings,
    continual: ContinualSettings,
) -> tuple[Linker, TrainLog, tuple[TaskState, ...]]:
    """The linker trained on ``task`` as the options say, its log and the states kept."""
    import torch

    from kfacel.training.continual import update_linker, update_within_tolerance

    if args.threads:
        torch.set_num_threads(args.threads)
    linker, states = _start(args, task)
    if continual.olora is not None:
        from kfacel.penalties.olora import lora_a_weights

        if not lora_a_weights(linker.model):
            raise UserError(
                f"--olora: {args.init}'s ranker has no LoRA adapter (train it with "
                "--model transformer --lora-rank R)"
            )
    _say_protection(args, continual, states)
    tty = sys.stderr.isatty()  # progress bars only for a person watching
    if args.tolerance is None:
        log = update_linker(linker, task, states, settings, continual, progress=tty)
    else:
        linker, log, _ = update_within_tolerance(
            linker, task, states, settings, continual,
            tolerance=args.tolerance, progress=tty,
        )  # fmt: skip
    linker.meta["continual"] |= {"init": args.init, "replay": args.replay}
    return linker, log, states


def _check_out(args: argparse.Namespace) -> Path:
    """``--out`` resolved, refused when writing it could lose what is not kfacel's."""
    from kfacel._io import check_output_dir
    from kfacel.models import foreign_entries, is_model_dir

    out = Path(args.out)
    foreign = foreign_entries(out) if out.is_dir() and is_model_dir(out) else []
    if foreign:
        raise UserError(
            f"--out {args.out} holds files kfacel did not write "
            f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}): move "
            "them, or choose another --out"
        )
    return check_output_dir(
        args.out,
        inputs={
            "--init": [args.init] if args.init else [],
            "--task": [args.task],
            "--replay": args.replay,
            "--encoder": [args.encoder] if args.encoder else [],
        },
        own=is_model_dir,
        what="model directory",
        overwrite=args.overwrite,
    )


def _settings(args: argparse.Namespace) -> TrainSettings:
    """The training settings; the learning rate defaults by model kind."""
    from kfacel.models import read_model_config
    from kfacel.training.trainer import TrainSettings

    model = read_model_config(args.init)["model"] if args.init else args.model
    lr = args.lr if args.lr is not None else DEFAULT_LR.get(model, 1e-3)
    return TrainSettings(
        epochs=args.epochs,
        lr=lr,
        batch_size=args.batch_size,
        schedule=args.schedule,
        warmup=args.warmup,
        seed=args.seed,
        device=args.device,
        max_train=args.max_train,
        train_candidates=args.train_candidates,
        optimizer=args.optimizer,
        precision=args.precision,
        refresh=args.refresh,
        refresh_temperature=args.refresh_temperature,
        freeze_layers=args.freeze_layers,
        reinit_top=args.reinit_top,
    )


def _continual_settings(args: argparse.Namespace) -> ContinualSettings:
    """Penalty, strength rule, damping, LRC and replay from the options."""
    from kfacel.penalties.strength import Damping, Strength
    from kfacel.tasks.directory import load_task
    from kfacel.training.continual import ContinualSettings
    from kfacel.training.trainer import Replay

    _check_strength_has_a_penalty(args)
    if (args.olora is not None or args.ilora) and not args.init:
        raise UserError("--olora and --ilora continue a model: give --init MODEL")
    if args.ilora and not args.replay:
        raise UserError("--ilora replays old queries: give --replay TASK_DIR")
    replay = None
    if args.replay:
        examples = [ex for d in args.replay for ex in load_task(d).train]
        replay = Replay(examples, every=args.replay_every, n=args.replay_batches)
    if args.tolerance is not None and (
        args.lam is not None or args.lam_per_task or args.budget is not None
    ):
        raise UserError("--tolerance chooses λ itself: drop --lam and --budget")
    if args.tolerance is not None and args.penalty == "none":
        raise UserError(
            "--tolerance needs --penalty ewc/kfac/l2: with --penalty none there is "
            "no strength to search"
        )
    budget, budget_per_task = None, {}
    if args.budget is not None:
        try:
            budget = float(args.budget)
        except ValueError:
            budget_per_task = _per_task("--budget", args.budget)
    strength = Strength(
        lam=None if args.lam == "bayes" else args.lam,
        lam_per_task=_per_task("--lam-per-task", args.lam_per_task),
        bayes=args.lam == "bayes",
        budget=budget,
        budget_per_task=budget_per_task,
        budget_rate=args.budget_rate,
    )
    damping = Damping.default_for(args.penalty, args.damping, args.damping_kind)
    return ContinualSettings(
        penalty=args.penalty,
        strength=strength,
        damping=damping,
        lrc=args.lrc,
        replay=replay,
        olora=args.olora,
        ilora=args.ilora,
    )


def _check_strength_has_a_penalty(args: argparse.Namespace) -> None:
    """Refuse a strength or damping option given with ``--penalty none``.

    Plain fine-tuning has no penalty for them to act on; taking them silently would
    leave the user believing the old tasks are protected.
    """
    if args.penalty != "none":
        return
    given = {
        "--lam": args.lam is not None,
        "--lam-per-task": bool(args.lam_per_task),
        "--damping": args.damping is not None,
        "--damping-kind": args.damping_kind is not None,
    }
    for option, present in given.items():
        if present:
            raise UserError(
                f"{option} sets the penalty's strength, but --penalty is none: pass "
                "--penalty kfac (or ewc, l2) to protect the earlier tasks"
            )


def _say_protection(
    args: argparse.Namespace, continual: ContinualSettings, states: Sequence[TaskState]
) -> None:
    """One line on stderr: the strength rule in effect, or that nothing is protected."""
    if not args.init:
        return  # a new model: nothing to protect
    baseline = continual.olora is not None or continual.ilora
    if states and continual.penalty == "none" and not baseline:
        method = states[-1].method
        how = f"--penalty {method}" + (" --lam λ" if method == "l2" else "")
        n = len(states)
        print(
            f"kfacel train: warning: {args.init} holds {n} consolidation "
            f"state{'s' * (n != 1)} but --penalty is none: training is unprotected; "
            f"pass {how} to protect them",
            file=sys.stderr,
        )
        return
    names = [s.task for s in states]
    line = continual.describe(names, tolerance=args.tolerance)
    print(f"kfacel train: {line}", file=sys.stderr)


def _warn_if_retriever_replaced(init: str, task: Task) -> None:
    """Say so when the new task's retriever does not continue the model's.

    The model links with its last task's retriever; one that did not start from the
    model's (``prepare --retriever-init``) leaves the earlier tasks' retrieval
    unprotected.
    """
    from kfacel.tasks.directory import RETRIEVER_DIR

    held = Path(init) / RETRIEVER_DIR
    start = task.info.get("candidates", {}).get("retriever", {}).get("start")
    if not held.is_dir() or start is not None:
        return
    now = "its fine-tuned retriever" if task.retriever else "MiniLM as shipped"
    print(
        f"warning: {init}'s retriever is replaced by task {task.name}'s ({now}), "
        "which did not start from it: retrieval for the earlier tasks is not "
        f"protected (prepare the task with --retriever-epochs N --retriever-init {init})",
        file=sys.stderr,
    )


def _start(
    args: argparse.Namespace, task: Task
) -> tuple[Linker, tuple[TaskState, ...]]:
    """The linker to train and the consolidation states it carries."""
    from kfacel.consolidation import load_state
    from kfacel.linking.linker import load_linker, new_linker

    if args.lora_rank and args.init:
        raise UserError(
            f"--lora-rank: {args.init}'s ranker keeps its own adapters; drop the option"
        )
    if args.lora_rank and args.model != "transformer":
        raise UserError(
            "--lora-rank adapts the transformer ranker; add --model transformer"
        )
    if args.init:
        linker = load_linker(args.init)
        states = load_state(args.init, linker.model)
        _warn_if_retriever_replaced(args.init, task)
        if args.penalty != "none" and not states:
            raise UserError(
                f"--penalty {args.penalty}: {args.init} has no consolidated task "
                "(run `kfacel consolidate` first)"
            )
        return linker, states
    if args.penalty != "none":
        raise UserError(
            f"--penalty {args.penalty} needs --init MODEL_DIR with a consolidated task"
        )
    extra: dict[str, Any] = {"hidden": args.hidden} if args.hidden else {}
    if args.lora_rank:
        extra["lora_rank"] = args.lora_rank
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
        aliases=(task.aliases or True) if _uses_aliases(args.aliases, task) else False,
        max_mention_length=args.max_length,
        seed=args.seed,
        **extra,
    )
    return linker, ()


def _lam(text: str) -> float | str:
    """``bayes`` or a finite λ (argparse type)."""
    return "bayes" if text.strip().lower() == "bayes" else finite_float(text)


def _per_task(option: str, text: str | None) -> dict[str, float]:
    """``A=1e3,B=1e5`` as a dict."""
    per_task: dict[str, float] = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            per_task[name.strip()] = float(value)
        except ValueError:
            raise UserError(
                f"{option}: cannot read {item!r} (want NAME=VALUE)"
            ) from None
    return per_task
