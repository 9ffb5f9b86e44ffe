"""``kfacel consolidate``: add a finished task's anchor and curvature to a model directory."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfacel.cli import UserError
from kfacel.cli._args import device, nonnegative_int, positive_int
from kfacel.cli._choices import (
    CONSOLIDATION_METHODS,
    CONSOLIDATION_SPLITS,
    DEFAULT_RETRIEVER_STEPS,
)

if TYPE_CHECKING:
    from kfacel.consolidation import TaskState
    from kfacel.linking.linker import Linker
    from kfacel.tasks.directory import Task


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``consolidate`` subcommand."""
    p = subparsers.add_parser(
        "consolidate",
        help="store a task's anchor and curvature in a model directory (needs the task data)",
    )
    p.add_argument("model_dir", help="model directory trained on the task")
    p.add_argument(
        "--task", required=True, help="task directory (its train split is read)"
    )
    p.add_argument(
        "--split",
        choices=CONSOLIDATION_SPLITS,
        default="train",
        help="queries the Fisher is estimated on: train (paper) or the held-out dev",
    )
    p.add_argument(
        "--method",
        choices=CONSOLIDATION_METHODS,
        default="kfac",
        help="kfac (KFC: a Kronecker-factored Fisher), ewc (its diagonal) or l2 "
        "(the anchor alone)",
    )
    p.add_argument(
        "--fisher",
        choices=("empirical", "sampled", "exact"),
        default="empirical",
        help="the Fisher's labels: the gold (empirical, the paper's), one drawn from "
        "the model (sampled), or every candidate weighted by its probability (exact)",
    )
    p.add_argument(
        "--max-examples",
        type=positive_int,
        metavar="N",
        help="estimate on a seeded subset of N queries (default: all)",
    )
    p.add_argument(
        "--uncovered",
        choices=("ignore", "diagonal"),
        default="ignore",
        help="K-FAC: parameters without factors (LayerNorm): ignore (paper) or diagonal",
    )
    p.add_argument(
        "--approx",
        choices=("expand", "reduce"),
        default="expand",
        help="K-FAC: uses of a layer within an example (positions, candidates, calls) "
        "as independent (expand, paper) or aggregated per example (reduce)",
    )
    p.add_argument(
        "--factor-rank",
        type=positive_int,
        metavar="K",
        help="K-FAC: keep each Kronecker factor larger than K at its top K eigenpairs "
        "and the mean of the rest (eq. K10): a smaller state and a cheaper penalty "
        "step; default: whole factors",
    )
    p.add_argument(
        "--retriever-steps",
        type=nonnegative_int,
        default=DEFAULT_RETRIEVER_STEPS,
        metavar="N",
        help="batches the fine-tuned retriever's K-FAC Fisher is estimated on, when "
        "the model holds the task's retriever (0: leave it unconsolidated)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="queries per batch"
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of --max-examples' subset and of --fisher sampled",
    )
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:i]")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Estimate the curvature and append the state, holding the model's write lock."""
    from kfacel._lock import write_lock

    with write_lock(args.model_dir, "consolidate"):
        return _consolidate(args)


def _consolidate(args: argparse.Namespace) -> int:
    """Estimate the curvature and append the state; prints a JSON summary."""
    from kfacel.consolidation import TaskState, save_state
    from kfacel.linking.linker import load_linker
    from kfacel.tasks.directory import RETRIEVER_DIR, load_task

    linker = load_linker(args.model_dir)
    task = load_task(args.task)
    done = _check_consolidatable(args, linker, task)
    start = time.perf_counter()
    state = _estimate(args, linker, task)
    retriever = _retriever_state(args, task)
    path = save_state(args.model_dir, state)
    if isinstance(retriever, TaskState):
        save_state(Path(args.model_dir) / RETRIEVER_DIR, retriever)
    params = sum(p.numel() * p.element_size() for p in linker.model.parameters())
    summary = {
        "task": task.name,
        "method": args.method,
        "fisher": args.fisher,
        "approx": args.approx,
        "split": args.split,
        "examples": state.meta["examples_used"],
        "state": str(path),
        "state_bytes": state.nbytes(),
        "param_bytes": params,
        "seconds": round(time.perf_counter() - start, 2),
        "tasks": [*done, task.name],
        "retriever": _describe_retriever(retriever),
    }
    print(json.dumps(summary))
    return 0


def _estimate(args: argparse.Namespace, linker: Linker, task: Task) -> TaskState:
    """The task's state as the options ask (``consolidate_task``)."""
    from kfacel.training.consolidate import consolidate_task

    return consolidate_task(
        linker,
        task,
        method=args.method,
        fisher=args.fisher,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        uncovered=args.uncovered,
        approx=args.approx,
        split=args.split,
        factor_rank=args.factor_rank,
        seed=args.seed,
        device=args.device,
        progress=sys.stderr.isatty(),
    )


def _check_consolidatable(
    args: argparse.Namespace, linker: Linker, task: Task
) -> list[str]:
    """The tasks the model holds states of; refuses what cannot be consolidated.

    Raises:
        UserError: the task already has a state, ``--factor-rank`` without K-FAC, or
            the model was not last trained on the task.
    """
    from kfacel.consolidation import load_state

    done = [s.task for s in load_state(args.model_dir, linker.model)]
    if task.name in done:
        raise UserError(
            f"{args.model_dir} already holds a consolidation state for {task.name!r}"
        )
    if args.factor_rank is not None and args.method != "kfac":
        raise UserError(f"--factor-rank needs --method kfac, not {args.method!r}")
    _check_trained_on(linker.meta, task, args.model_dir)
    return done


def _describe_retriever(retriever: TaskState | str) -> dict[str, Any] | str:
    """The summary's ``retriever``: its state's size, or why there is none."""
    from kfacel.consolidation import TaskState

    if not isinstance(retriever, TaskState):
        return retriever
    return {
        "examples": retriever.meta["examples_used"],
        "state_bytes": retriever.nbytes(),
    }


def _check_trained_on(meta: dict[str, Any], task: Task, model_dir: str) -> None:
    """Refuse a task other than the one the model was last trained on.

    The state's anchor is the model's weights as they are, so only the task they were
    last fit to can be consolidated: ``train`` on it, then ``consolidate`` it. A model
    that does not record its last task is checked against its ``history``.

    Raises:
        UserError: naming the model, the task and the task the model last learned.
    """
    trained_on = meta.get("task")
    last = trained_on.get("name") if isinstance(trained_on, dict) else None
    history = meta.get("history", [])
    if last is None and (not history or task.name in history):
        return
    if task.name != last:
        trained = f"last trained on {last!r}" if last else f"trained on {history}"
        raise UserError(
            f"{model_dir} was {trained}, not on task {task.name!r} ({task.path}): "
            "consolidate a task with the model trained on it"
        )
    _check_same_files(trained_on, task, model_dir)


def _check_same_files(trained_on: Any, task: Task, model_dir: str) -> None:
    """Refuse a task whose files differ from those the model was trained on.

    Two task directories can share a name (a re-prepared task, another corpus named
    alike); the model records its task's fingerprint (``task_fingerprint``), and a
    model that records none is not checked.
    """
    from kfacel.tasks.directory import task_fingerprint

    recorded = trained_on.get("fingerprint") if isinstance(trained_on, dict) else None
    if not recorded:
        return
    now = task_fingerprint(task.path)
    changed = sorted(n for n in {*recorded, *now} if recorded.get(n) != now.get(n))
    if changed:
        raise UserError(
            f"{task.path} is not the task {model_dir} was trained on: "
            f"{', '.join(changed)} differ from the files of that task (named "
            f"{task.name!r} too); consolidate the task the model was trained on"
        )


def _retriever_state(args: argparse.Namespace, task: Task) -> TaskState | str:
    """The model's retriever's state on ``task``, or why there is none.

    A model built on a task with a fine-tuned retriever holds it as ``retriever/``;
    its K-FAC Fisher is estimated on the groups it was trained on, so that the next
    task's retriever (``prepare --retriever-init``) can be penalized.
    """
    from kfacel.retrieval.continual import consolidate_task_retriever, retriever_states
    from kfacel.tasks.directory import (
        RETRIEVER_DIR,
        RETRIEVER_GROUPS_FILE,
        recorded_settings,
        retriever_groups,
    )

    checkpoint = Path(args.model_dir) / RETRIEVER_DIR
    if not checkpoint.is_dir() or task.retriever is None:
        return "none: the task has no fine-tuned retriever"
    if not args.retriever_steps:
        return "not consolidated (--retriever-steps 0)"
    if not (task.path / RETRIEVER_GROUPS_FILE).is_file():
        return "not consolidated: the task's dictionary and links hold no synonyms"
    held = [s.task for s in retriever_states(checkpoint)]
    if task.name in held:
        raise UserError(f"{checkpoint} already holds a state for {task.name!r}")
    try:
        return consolidate_task_retriever(
            checkpoint, task.retriever, retriever_groups(task), recorded_settings(task),
            task=task.name, max_steps=args.retriever_steps,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"retriever: {exc} (--retriever-steps 0 skips it)") from None
