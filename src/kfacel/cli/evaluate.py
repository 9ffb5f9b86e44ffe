"""``kfacel evaluate``: accuracy@1, MRR and recall@k of a model on task splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kfacel.cli._args import device, positive_int
from kfacel.cli._choices import PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser("evaluate", help="evaluate a model on tasks")
    p.add_argument("model_dir", help="model directory (kfacel train's --out)")
    p.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="DIR",
        help="a task directory (kfacel prepare's --out; repeatable)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "dev", "test"),
        help="the split of each task to evaluate on",
    )
    p.add_argument("--output", metavar="F", help="also write the results here, as JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output when it is an existing kfacel evaluation file",
    )
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--batch-size", type=positive_int, default=128, help="queries per batch"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: float16 autocast on CUDA; on the CPU bfloat16 for the "
        "transformer where the CPU has bfloat16 units, else float32; bfloat16: "
        "autocast on either",
    )
    p.add_argument(
        "--threads", type=positive_int, help="CPU threads (default: torch's)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print a table and write ``{task: {accuracy, mrr, recall@k, n, …}}``."""
    import torch

    from kfacel._io import atomic_write_json

    if args.output:  # before any work
        _check_output(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = _evaluate_tasks(args)
    _print_table(results)
    if args.output:
        atomic_write_json(args.output, results)
    return 0


def _evaluate_tasks(args: argparse.Namespace) -> dict[str, dict]:
    """Each ``--task``'s metrics on ``--split``, with its generator's accuracy@1."""
    from kfacel.linking.evaluate import evaluate_split
    from kfacel.linking.linker import load_linker
    from kfacel.tasks.directory import load_task

    linker = load_linker(args.model_dir)
    results: dict[str, dict] = {}
    for task_dir in args.task:
        task = load_task(task_dir)
        ev = evaluate_split(
            linker,
            task.split(args.split),
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
        )
        gen = task.info.get("generator", {}).get(args.split, {})
        results[task.name] = {
            **ev.to_json(),
            "generator_accuracy": gen.get("accuracy@1"),
        }
    return results


def _print_table(results: dict[str, dict]) -> None:
    """One line per task, then what the retrieved-gold columns mean."""
    nan = float("nan")
    print(
        f"{'task':<20} {'n':>7} {'acc@1':>7} {'mrr':>7} {'r@5':>7} {'gen@1':>7} "
        f"{'retr':>7} {'acc@1|r':>7} {'e2e@1':>7}"
    )
    for name, r in results.items():
        cells = [r.get(k) for k in ("recall@5", "generator_accuracy", "retrieved")]
        cells += [r.get("accuracy_retrieved"), r.get("accuracy_end_to_end")]
        print(
            f"{name:<20} {r['n']:>7} {r['accuracy']:>7.4f} {r['mrr']:>7.4f} "
            + " ".join(f"{nan if v is None else v:>7.4f}" for v in cells)
        )
    print(
        "retr: share of queries whose gold the generator retrieved itself (the others "
        "had it inserted); acc@1|r: accuracy@1 on those; e2e@1: retrieved and ranked "
        "first, over all queries (what `kfacel link` would score)"
    )


def _check_output(args: argparse.Namespace) -> None:
    """Refuse an ``--output`` that is an input or a file this command did not write."""
    from kfacel._io import check_output_file

    check_output_file(
        args.output,
        inputs={"MODEL_DIR": [args.model_dir], "--task": args.task},
        own=_is_evaluation,
        what="evaluation file",
        overwrite=args.overwrite,
    )


def _is_evaluation(path: Path) -> bool:
    """Whether ``path`` holds results this command wrote: ``{task: {accuracy, n, …}}``."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(results, dict)
        and bool(results)
        and all(
            isinstance(r, dict) and {"accuracy", "n"} <= r.keys()
            for r in results.values()
        )
    )
