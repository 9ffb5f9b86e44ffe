"""``kfacel link``: rank a dictionary's concepts for mentions in text."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from kfacel.cli import UserError
from kfacel.cli._args import positive_int
from kfacel.cli._choices import PRECISIONS
from kfacel.data.readers import dictionary

if TYPE_CHECKING:
    from kfacel.linking.link import MentionQuery, QueryLine, Ranked
    from kfacel.linking.linker import Linker
    from kfacel.retrieval.base import CandidateGenerator

SCHEMA = """\
input (--input F.jsonl): one JSON object a line, blank lines skipped
  {"text": "...", "mention": "...", "start": 12}
  "start" (optional): the mention's character offset in "text"; default: its first
  occurrence.
output: one JSON object a line, in input order
  {"line": 3, "mention": "...", "start": 12, "end": 22,
   "concepts": [{"id": "...", "name": "...", "score": 1.5, "synonym": "..."}, ...]}
  "line": the 1-based line of --input (absent for --text/--mention); "start"/"end":
  the mention's character offsets in its text; "synonym": the name the ranker read,
  when it is not the preferred name; concepts best first.
  A bad line (not such an object, a mention not in its text, a lone surrogate, no
  candidate found) stops the run with an error naming file and line; with --on-error
  skip it gives {"line": 3, "error": "..."} instead. A file that is not UTF-8 is
  refused whole.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``link`` subcommand."""
    p = subparsers.add_parser(
        "link",
        help="link mentions to dictionary concepts",
        description="Rank the dictionary's concepts for each mention; print one JSON "
        "object a line.",
        epilog=f"{SCHEMA}\n{dictionary.FORMAT}",
    )
    p.add_argument("model_dir", help="model directory (kfacel train's --out)")
    p.add_argument(
        "--dictionary",
        required=True,
        metavar="F",
        help="the concept dictionary the model's task was prepared with",
    )
    p.add_argument("--text", help="the text the mention is in")
    p.add_argument("--mention", help="the mention (first occurrence in --text)")
    p.add_argument(
        "--input",
        metavar="F",
        help='JSONL, one {"text", "mention"[, "start"]} object a line (see below)',
    )
    p.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="a bad --input line: stop with an error naming it, or skip it with an "
        '{"line", "error"} record in the output',
    )
    p.add_argument(
        "--top", type=positive_int, default=5, help="concepts to print per mention"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the ranker's arithmetic: auto (float32 on the CPU) or bfloat16 autocast "
        "(fast on CPUs with bfloat16 matrix units)",
    )
    p.add_argument(
        "--threads", type=positive_int, help="CPU threads (default: torch's)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the ranked concepts of each mention as JSON lines."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    entries = _query_lines(args)
    ranked = iter(_rank(args, [e.query for e in entries if e.query is not None]))
    records = [
        _record(e, next(ranked) if e.query is not None else [], args.top)
        for e in entries
    ]
    failed = [r for r in records if "error" in r]
    if failed and args.on_error == "stop":
        raise UserError(f"{_where(args, failed[0])}: {failed[0]['error']}")
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    if failed:
        print(
            f"warning: {len(failed)} of {len(records)} lines of {args.input} "
            'skipped (their {"line", "error"} records are in the output)',
            file=sys.stderr,
        )
    return 0


def _rank(args: argparse.Namespace, queries: list[MentionQuery]) -> list[list[Ranked]]:
    """The model's ranking of each query's candidates over ``--dictionary``."""
    from kfacel.linking.link import link
    from kfacel.linking.linker import load_linker
    from kfacel.tasks.directory import ranker_reads_retrieval_text

    linker = load_linker(args.model_dir)
    task = linker.meta.get("task", {})
    cands = task.get("candidates", {})
    generator = _generator(args, linker, cands)
    if not queries:  # every --input line was bad (--on-error skip)
        return []
    return link(
        linker,
        generator,
        queries,
        num_candidates=int(cands.get("num_candidates", 10)),
        context_words=int(task.get("context_words", 10)),
        synonyms=bool(cands.get("synonyms", False)),  # older tasks: preferred names
        as_retrieved=ranker_reads_retrieval_text(cands),  # older tasks: as written
        precision=args.precision,
    )


def _record(entry: QueryLine, ranked: list[Ranked], top: int) -> dict[str, Any]:
    """The output object of one query line (see ``SCHEMA``)."""
    head = {} if entry.line is None else {"line": entry.line}
    if entry.query is None:
        return head | {"error": entry.error}
    if not ranked:
        return head | {"error": f"no candidate found for {entry.query.mention!r}"}
    start, end = entry.query.span()
    concepts = [
        {"id": r.id, "name": r.name, "score": round(r.score, 4)}
        | ({"synonym": r.synonym} if r.synonym else {})
        for r in ranked[:top]
    ]
    mention = {"mention": entry.query.mention, "start": start, "end": end}
    return head | mention | {"concepts": concepts}


def _where(args: argparse.Namespace, record: dict[str, Any]) -> str:
    return f"{args.input}:{record['line']}" if "line" in record else "--mention"


def _generator(
    args: argparse.Namespace, linker: Linker, cands: dict[str, Any]
) -> CandidateGenerator:
    """The model's candidate generator over ``--dictionary``, checked against training.

    A model whose task recorded no dictionary digest cannot be checked: one warning
    line says so.

    Raises:
        UserError: when the dictionary differs from the one the model's task was built
            with (its digest is recorded), or a retrieval model lacks its alias table.
    """
    from kfacel.data.readers import read_dictionary
    from kfacel.linking.linker import RETRIEVAL_FILE
    from kfacel.retrieval.base import dictionary_digest
    from kfacel.retrieval.dense import SentenceEncoder
    from kfacel.retrieval.methods import RETRIEVAL_METHODS, build_generator

    concepts = read_dictionary(args.dictionary)
    expected = cands.get("dictionary_sha256")
    if not expected:
        print(
            f"warning: {args.model_dir} records no digest of the dictionary it was "
            f"trained with (its task was prepared by an older kfacel), so --dictionary "
            f"{args.dictionary} is not checked against it: candidate ranks match "
            "training only if it is that dictionary",
            file=sys.stderr,
        )
    elif dictionary_digest(concepts) != expected:
        raise UserError(
            f"--dictionary {args.dictionary} ({len(concepts)} concepts) differs from "
            f"the dictionary {args.model_dir} was trained with "
            f"({cands.get('dictionary_size', '?')} concepts, sha256 {expected[:12]}…): "
            "candidate ranks would not match training; give that dictionary"
        )
    method = cands.get("method", "tfidf")
    aliases = linker.retrieval_aliases()
    if method in RETRIEVAL_METHODS and aliases is None:
        raise UserError(
            f"{args.model_dir}: {RETRIEVAL_FILE} is missing; {method} retrieval needs "
            "the training alias table"
        )
    encoder = SentenceEncoder(linker.retriever) if linker.retriever else None
    return build_generator(
        method, concepts, aliases=aliases, encoder=encoder, progress=True
    )


def _query_lines(args: argparse.Namespace) -> list[QueryLine]:
    """The queries of ``--input``, or the one of ``--text``/``--mention``.

    Raises:
        UserError: when both or neither are given, or an option is not a valid query.
        ValueError: naming file and line of the first bad ``--input`` line, unless
            ``--on-error skip``.
    """
    from kfacel.linking.link import (
        MentionQuery,
        QueryLine,
        lone_surrogate,
        read_query_lines,
    )

    if args.input is not None:
        given = [o for o in ("text", "mention") if getattr(args, o) is not None]
        if given:
            raise UserError(
                f"give --input or --text and --mention, not --{given[0]} too"
            )
        entries = read_query_lines(args.input)
        bad = next((e for e in entries if e.query is None), None)
        if bad is not None and args.on_error == "stop":
            raise ValueError(f"{args.input}:{bad.line}: {bad.error}")
        return entries
    if args.text is None or args.mention is None:
        raise UserError("give --text and --mention, or --input F.jsonl")
    for option, value in (("--text", args.text), ("--mention", args.mention)):
        problem = lone_surrogate(value)
        if problem:
            raise UserError(f"{option} is not valid text: {problem}")
    try:
        q = MentionQuery(args.text, args.mention)
        q.span()
    except ValueError as exc:
        raise UserError(f"--mention: {exc}") from None
    return [QueryLine(None, q)]
