"""``kfacel prepare``: build task directories from corpora (pubtator, jsonl, benchmark).

::

    kfacel prepare pubtator --train F --dev F --test F --dictionary D --out DIR
    kfacel prepare pubtator --corpus F [--corpus F2 ...] --split-by-document 0.7,0.1,0.2
        --dictionary D --out DIR [--candidates fused|tfidf|...] [--num-candidates C]
        [--context-words K] [--seed S] [--name NAME]
    kfacel prepare jsonl --input F [--input F2 ...] --dictionary D --out DIR [...]
    kfacel prepare benchmark --data ../shared/data --out tasks/ [--small]

``--out`` is checked before anything is read: an output that holds an input, or an
existing non-empty directory that is not a task directory, is refused; an existing task
directory is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfacel._lock import write_lock
from kfacel.cli import UserError
from kfacel.cli._args import nonnegative_float, nonnegative_int, positive_int
from kfacel.cli._choices import (
    BENCHMARK_TASKS,
    CANDIDATE_METHODS,
    DEFAULT_CANDIDATES,
    DEFAULT_NUM_CANDIDATES,
    DEFAULT_RETRIEVER_LAM,
)
from kfacel.data.readers import (
    dictionary,
    jsonl,
    pubtator,
    read_dictionary,
    read_jsonl_mentions,
    read_pubtator,
)
from kfacel.data.records import Concept, Mention, SkipReport

if TYPE_CHECKING:
    from kfacel.retrieval.finetune import RetrieverSettings

SPLITS = jsonl.SPLITS
"""A task's splits: train, dev, test."""

OUT = """\
--out is checked before anything is read: an output that holds an input, or an existing
non-empty directory that is not a task directory, is refused; an existing task directory
is replaced only with --overwrite.
"""


def register(subparsers: Any) -> None:
    """Add ``prepare`` and its three formats to the ``kfacel`` parser."""
    parser = subparsers.add_parser(
        "prepare",
        help="build task directories from corpora",
        description="Build a task directory (train/dev/test queries, each a mention in "
        "context with C candidate concepts, and task.json) from annotated mentions and "
        "a concept dictionary. `kfacel prepare FORMAT --help` describes each input.",
        epilog=OUT,
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    _pubtator_parser(formats)
    _jsonl_parser(formats)
    _benchmark_parser(formats)


def _pubtator_parser(formats: Any) -> None:
    pub = formats.add_parser(
        "pubtator",
        help="a PubTator corpus and a dictionary",
        description="A task from a PubTator corpus: three split files, or files split "
        "by document (--corpus).",
        epilog=f"{pubtator.FORMAT}\n{dictionary.FORMAT}\n{OUT}",
    )
    pub.add_argument(
        "--train",
        type=Path,
        metavar="F",
        help="the training split (with --dev, --test)",
    )
    pub.add_argument("--dev", type=Path, metavar="F", help="the development split")
    pub.add_argument("--test", type=Path, metavar="F", help="the test split")
    pub.add_argument(
        "--corpus",
        type=Path,
        action="append",
        default=[],
        metavar="F",
        help="a corpus to split by document instead (repeatable)",
    )
    _common(pub)
    pub.set_defaults(handler=_pubtator)


def _jsonl_parser(formats: Any) -> None:
    parser = formats.add_parser(
        "jsonl",
        help="a generic JSONL of mentions",
        description="A task from your own mentions, one JSON object a line.",
        epilog=f"{jsonl.FORMAT}\n{dictionary.FORMAT}\n{OUT}",
    )
    parser.add_argument(
        "--input",
        type=Path,
        action="append",
        required=True,
        metavar="F",
        help="a JSONL file of mentions (repeatable)",
    )
    parser.add_argument(
        "--composite",
        choices=jsonl.COMPOSITE,
        default="refuse",
        help="mentions with several concept ids: refuse the file, naming how many and "
        "the first line, or skip them (counted in task.json)",
    )
    _common(parser)
    parser.set_defaults(handler=_jsonl)


def _benchmark_parser(formats: Any) -> None:
    bench = formats.add_parser(
        "benchmark",
        help="PUBLIC-3 from shared/data",
        description="The public three-task benchmark (medmentions, cadec, ncbi), one "
        "task directory each, with the paper's candidates and context widths.",
        epilog=OUT,
    )
    bench.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="the data directory (medmentions/, cadec/, ncbi_disease/)",
    )
    bench.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="parent of the tasks"
    )
    bench.add_argument(
        "--small",
        action="store_true",
        help="the CPU variant: 10%% of MedMentions' training queries, at most 2,000 "
        "dev and test queries a task",
    )
    bench.add_argument(
        "--task",
        action="append",
        choices=BENCHMARK_TASKS,
        help="build only this task (repeatable; default: all three)",
    )
    bench.add_argument(
        "--candidates",
        choices=CANDIDATE_METHODS,
        help="candidate method of every task (default: the paper's, per task); "
        "fused: the retrieval a linker in use runs",
    )
    bench.add_argument(
        "--num-candidates",
        type=positive_int,
        metavar="C",
        help="candidates per query in every task (default: the paper's, per task)",
    )
    bench.add_argument(
        "--seed",
        type=nonnegative_int,
        default=13,
        help="seed of the retriever's fine-tuning (--retriever-epochs)",
    )
    _overwrite_option(bench)
    _names_option(bench)
    _retriever_option(bench)
    bench.set_defaults(handler=_benchmark)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dictionary",
        type=Path,
        required=True,
        metavar="F",
        help="the concept dictionary: TSV or MEDIC (see below)",
    )
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="the task directory"
    )
    p.add_argument(
        "--split-by-document",
        default="0.7,0.1,0.2",
        metavar="TR,DE,TE",
        help="train, dev and test shares of the documents, when the input has no "
        "splits of its own",
    )
    p.add_argument(
        "--candidates",
        choices=CANDIDATE_METHODS,
        default=DEFAULT_CANDIDATES,
        help="how candidates are found: fused (the retrieval a linker in use runs: "
        "training aliases, then TF-IDF and dense fused), tfidf or bm25 over the names "
        "(the paper's), dense, or alias",
    )
    p.add_argument(
        "--num-candidates",
        type=positive_int,
        default=DEFAULT_NUM_CANDIDATES,
        metavar="C",
        help="candidates per query, the gold among them (at least 2); choose it "
        "from the recall curve in task.json",
    )
    p.add_argument(
        "--context-words",
        type=nonnegative_int,
        default=10,
        metavar="K",
        help="words of context on each side of a mention",
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=13,
        help="seed of the document split, the candidate order and the retriever",
    )
    p.add_argument("--name", help="task name (default: the directory's name)")
    _overwrite_option(p)
    _names_option(p)
    _retriever_option(p)


def _retriever_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--retriever-epochs",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="dense/fused: first fine-tune the dense retriever on the dictionary's "
        "synonyms and the training split's mention-concept links for N epochs "
        "(SapBERT-style; saved in the task); 0: MiniLM as shipped, or --retriever-init's "
        "retriever as it is",
    )
    p.add_argument(
        "--retriever-synonyms-only",
        action="store_true",
        help="fine-tune the retriever on the dictionary's synonyms alone",
    )
    p.add_argument(
        "--retriever-init",
        type=Path,
        metavar="DIR",
        help="dense/fused: the dense retriever to use, `kfacel align`'s output or an "
        "earlier model's or task's (a directory with retriever/): as it is, or with "
        "--retriever-epochs N fine-tuned further, the states it holds (its alignment, "
        "earlier tasks) penalized with KFC",
    )
    p.add_argument(
        "--retriever-lam",
        type=nonnegative_float,
        default=DEFAULT_RETRIEVER_LAM,
        metavar="λ",
        help="KFC strength of --retriever-init's earlier tasks (0: plain fine-tuning)",
    )


def _retriever(args: argparse.Namespace) -> RetrieverSettings | None:
    from kfacel.retrieval.continual import retriever_start
    from kfacel.retrieval.finetune import RetrieverSettings

    if not args.retriever_epochs and args.retriever_init is None:
        return None
    start = None
    if args.retriever_init is not None:
        lam = args.retriever_lam if args.retriever_epochs else 0  # as is: no update
        try:
            start = retriever_start(args.retriever_init, lam=lam or None)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"--retriever-init: {exc}") from None
    return RetrieverSettings(
        epochs=args.retriever_epochs,
        seed=args.seed,
        mentions=not args.retriever_synonyms_only,
        start=start,
    )


def _overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing task directory (never any other directory)",
    )


def _names_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--candidate-names",
        choices=("closest", "preferred"),
        default="closest",
        help="a candidate's name the ranker reads: its synonym closest to the mention, "
        "or its preferred name only",
    )


def _fractions(text: str) -> list[float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise UserError(
            f"--split-by-document wants three shares summing to 1: {text!r}"
        )
    return parts


def _check(args: argparse.Namespace, sources: Sequence[Path]) -> None:
    """Refuse bad settings and an --out that would lose data, before any reading."""
    from kfacel.tasks.directory import check_task_out

    if args.num_candidates < 2:
        raise UserError(f"--num-candidates must be ≥ 2, got {args.num_candidates}")
    _fractions(args.split_by_document)
    init = [args.retriever_init] if args.retriever_init else []
    check_task_out(
        args.out, inputs=[*sources, args.dictionary, *init], overwrite=args.overwrite
    )


def _build(
    args: argparse.Namespace,
    splits: dict[str, list[Mention]],
    skips: SkipReport,
    sources: Sequence[Path],
) -> int:
    concepts = read_dictionary(args.dictionary, skips=skips)
    if len(concepts) < 2:
        raise UserError(
            f"{args.dictionary}: {len(concepts)} usable concept; candidate ranking "
            "needs a dictionary of at least 2 concepts"
        )
    with write_lock(args.out, "prepare"):
        _check(args, sources)  # again: another writer may have finished meanwhile
        info = _prepare(args, splits, skips, sources, concepts)
    print(report(info))
    return 0


def _prepare(
    args: argparse.Namespace,
    splits: dict[str, list[Mention]],
    skips: SkipReport,
    sources: Sequence[Path],
    concepts: list[Concept],
) -> dict[str, Any]:
    """``prepare_task`` with the options of ``args``; returns the task's info."""
    from kfacel.tasks.prepare import TaskSettings, prepare_task

    settings = TaskSettings(
        method=args.candidates,
        num_candidates=args.num_candidates,
        context_words=args.context_words,
        seed=args.seed,
        synonyms=args.candidate_names == "closest",
        retriever=_retriever(args),
    )
    return prepare_task(
        args.out,
        name=args.name or args.out.resolve().name,
        splits=splits,
        concepts=concepts,
        settings=settings,
        sources=[str(s) for s in (*sources, args.dictionary)],
        skips=skips,
        progress=True,
    )


def _split(
    mentions: list[Mention], args: argparse.Namespace
) -> dict[str, list[Mention]]:
    from kfacel.tasks.split import split_by_document

    parts = split_by_document(mentions, _fractions(args.split_by_document), args.seed)
    return dict(zip(SPLITS, parts, strict=True))


def _pubtator(args: argparse.Namespace) -> int:
    given = [args.train, args.dev, args.test]
    skips = SkipReport()
    if args.corpus and any(given):
        raise UserError("give either --train/--dev/--test or --corpus, not both")
    if not args.corpus and not all(given):
        raise UserError("give --train, --dev and --test, or --corpus")
    _check(args, args.corpus or given)
    if args.corpus:
        mentions = [m for f in args.corpus for m in read_pubtator(f, skips=skips)]
        return _build(args, _split(mentions, args), skips, args.corpus)
    splits = {
        s: list(read_pubtator(f, skips=skips))
        for s, f in zip(SPLITS, given, strict=True)
    }
    return _build(args, splits, skips, given)


def _jsonl(args: argparse.Namespace) -> int:
    _check(args, args.input)
    skips = SkipReport()
    pairs = [
        p
        for f in args.input
        for p in read_jsonl_mentions(f, skips=skips, composite=args.composite)
    ]
    labelled = [s for _, s in pairs if s is not None]
    if labelled and len(labelled) != len(pairs):
        raise UserError("either every line has a 'split' or none has")
    if labelled:
        splits = {s: [m for m, split in pairs if split == s] for s in SPLITS}
    else:
        splits = _split([m for m, _ in pairs], args)
    return _build(args, splits, skips, args.input)


def _benchmark(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise UserError(f"{args.data}: no such data directory")
    tasks = tuple(args.task) if args.task else BENCHMARK_TASKS
    with write_lock(args.out, "prepare benchmark"):
        return _build_benchmark(args, tasks)


def _build_benchmark(args: argparse.Namespace, tasks: tuple[str, ...]) -> int:
    """Build the benchmark's tasks into ``--out`` and print their reports."""
    from kfacel.tasks.benchmark import build_public3
    from kfacel.tasks.directory import check_task_out

    if args.retriever_init is not None:
        for task in tasks:  # a task's retriever must not start from its own output
            check_task_out(
                args.out / task, inputs=[args.retriever_init], overwrite=True
            )
    for info in build_public3(
        args.data,
        args.out,
        small=args.small,
        tasks=tasks,
        synonyms=args.candidate_names == "closest",
        overwrite=args.overwrite,
        method=args.candidates,
        num_candidates=args.num_candidates,
        progress=True,
        retriever=_retriever(args),
    ).values():
        print(report(info))
    return 0


def report(info: dict[str, Any]) -> str:
    """A short human-readable summary of a ``task.json``."""
    cand = info["candidates"]
    lines = [
        f"task {info['name']}: {cand['method']} candidates, "
        f"C={cand['num_candidates']}, {cand['dictionary_size']} concepts, "
        f"context {info['context_words']} words"
    ]
    for split in SPLITS:
        c, g = info["counts"][split], info["generator"][split]
        recall = " ".join(
            f"{k}={v:.3f}" for k, v in g.items() if k.startswith("recall@")
        )
        lines.append(
            f"  {split:5s} {c['queries']:6d} queries from {c['mentions']} mentions, "
            f"{c['documents']} docs; generator {recall} "
            f"accuracy@1={g['accuracy@1']:.3f}"
        )
        for channel, stats in info.get("channels", {}).get(split, {}).items():
            recall = " ".join(
                f"{k}={v:.3f}" for k, v in stats.items() if k.startswith("recall@")
            )
            lines.append(f"        channel {channel:6s} {recall}")
        dropped = c.get("dropped_not_retrieved")
        if dropped:
            lines.append(
                f"        {dropped} training queries left out: retrieval missed "
                "their gold"
            )
    lines += _reasons("skipped", info["skipped"]["skipped"])
    lines += _reasons("repaired", info["skipped"]["repaired"])
    return "\n".join(lines)


def _reasons(kind: str, reasons: dict[str, dict[str, Any]]) -> Sequence[str]:
    return [
        f"  {kind}: {r['count']} × {reason} (first at {r['first'] or '?'})"
        for reason, r in reasons.items()
    ]
