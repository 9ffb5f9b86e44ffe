"""``kfacel align``: one dense retriever aligned on the synonyms of every dictionary.

::

    kfacel align --dictionary D [--dictionary D2 ...] --out DIR [--epochs N]
        [--init DIR [--lam λ]] [--seed S] [--overwrite]

Then ``kfacel prepare … --retriever-init DIR`` uses it as every task's dense channel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from kfacel.cli import UserError
from kfacel.cli._args import nonnegative_float, nonnegative_int, positive_int
from kfacel.cli._choices import DEFAULT_RETRIEVER_LAM, DEFAULT_RETRIEVER_STEPS

DICTIONARIES = """\
dictionaries (--dictionary, repeatable): a TSV or MEDIC dictionary file (as `kfacel
prepare` reads it), an ontology file (*.jsonl.gz, as a task keeps its dictionary), or a
task directory (its dictionary.jsonl.gz). Only names are read. Concepts of different
dictionaries that share a name are aligned as one.
"""


def register(subparsers: Any) -> None:
    """Add ``align`` to the ``kfacel`` parser."""
    p = subparsers.add_parser(
        "align",
        help="align one dense retriever on the synonyms of every dictionary",
        description="Fine-tune the dense retriever (MiniLM) SapBERT-style on the "
        "synonyms of every given dictionary at once, estimate its K-FAC state, and "
        "write a retriever directory that `kfacel prepare --retriever-init DIR` uses "
        "as every task's dense channel.",
        epilog=DICTIONARIES,
    )
    p.add_argument(
        "--dictionary", type=Path, action="append", required=True, metavar="D",
        help="a dictionary to align on (repeat for each)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, required=True, help="retriever directory to write"
    )
    p.add_argument(
        "--epochs", type=positive_int, default=1, metavar="N",
        help="passes over the concepts with synonyms",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the batches")
    p.add_argument(
        "--init", type=Path, metavar="DIR",
        help="start from this retriever (an earlier `kfacel align` output, or a model "
        "or task directory with retriever/); its states are penalized with KFC",
    )  # fmt: skip
    p.add_argument(
        "--lam", type=nonnegative_float, default=DEFAULT_RETRIEVER_LAM, metavar="λ",
        help="KFC strength of --init's states (0: plain fine-tuning)",
    )  # fmt: skip
    p.add_argument(
        "--consolidate-steps", type=nonnegative_int, default=DEFAULT_RETRIEVER_STEPS,
        metavar="N", help="batches the K-FAC state is estimated on (0: no state)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace --out when it is an existing aligned retriever directory",
    )  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read the dictionaries, align, consolidate, write ``--out``; print a summary."""
    from kfacel._lock import write_lock
    from kfacel.retrieval.align import align_retriever, is_aligned_dir, write_aligned
    from kfacel.retrieval.finetune import RetrieverSettings

    _check_out(args)  # before any work
    dictionaries = [_dictionary(p) for p in args.dictionary]
    start = _start(args)
    settings = RetrieverSettings(epochs=args.epochs, seed=args.seed, start=start)
    began = time.perf_counter()
    aligned = align_retriever(
        dictionaries, settings, consolidate_steps=args.consolidate_steps,
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    with write_lock(args.out, "align"):
        _check_out(args)  # again: another writer may have finished meanwhile
        write_aligned(args.out, aligned, replace=is_aligned_dir)
    summary = {k: aligned.record[k] for k in ("groups", "steps", "loss_last")}
    summary |= {"seconds": round(time.perf_counter() - began, 1)}
    print(json.dumps({"out": str(args.out), **summary}))
    return 0


def _dictionary(path: Path) -> Any:
    """The ``Dictionary`` of a dictionary file, an ontology file or a task directory."""
    from kfacel.data.readers import read_dictionary
    from kfacel.retrieval.align import Dictionary
    from kfacel.retrieval.ontology import SUFFIX, ontology_name, read_ontology
    from kfacel.tasks.directory import DICTIONARY_FILE

    if path.is_dir():
        file = path / DICTIONARY_FILE
        if not file.is_file():
            raise UserError(
                f"--dictionary {path}: a directory without {DICTIONARY_FILE}"
            )
        return Dictionary(path.resolve().name, read_ontology(file), str(path))
    name = ontology_name(str(path), "dictionary")
    if path.name.endswith(SUFFIX):
        return Dictionary(name, read_ontology(path), str(path))
    return Dictionary(name, read_dictionary(path), str(path))


def _start(args: argparse.Namespace) -> Any:
    from kfacel.retrieval.continual import retriever_start

    if args.init is None:
        return None
    try:
        return retriever_start(args.init, lam=args.lam or None)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--init: {exc}") from None


def _check_out(args: argparse.Namespace) -> Path:
    """``--out`` resolved, refused when writing it could lose what is not kfacel's."""
    from kfacel._io import check_output_dir
    from kfacel.retrieval.align import is_aligned_dir

    inputs = {"--dictionary": list(args.dictionary)}
    if args.init is not None:
        inputs["--init"] = [args.init]
    try:
        return check_output_dir(
            args.out, inputs=inputs, own=is_aligned_dir, what="aligned retriever",
            overwrite=args.overwrite,
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from None
