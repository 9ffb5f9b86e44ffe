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
    from kfacel.linking.api import LinkedConcept
    from kfacel.linking.link import MentionQuery, QueryLine

SCHEMA = """\
input (--input F.jsonl): one JSON object a line, blank lines skipped
  {"text": "...", "mention": "...", "start": 12}
  "start" (optional): the mention's character offset in "text"; default: its first
  occurrence.
output: one JSON object a line, in input order
  {"line": 3, "mention": "...", "start": 12, "end": 22,
   "concepts": [{"id": "...", "name": "...", "score": 1.5, "ontology": "...",
                 "synonym": "..."}, ...]}
  "line": the 1-based line of --input (absent for --text/--mention); "start"/"end":
  the mention's character offsets in its text; "ontology": the dictionary the concept
  comes from, as the model names it; "synonym": the name the ranker read, when it is
  not the preferred name; concepts best first.
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
        description="Rank the concepts of the model's ontologies (every task's "
        "dictionary, kept in the model directory) for each mention; print one JSON "
        "object a line.",
        epilog=f"{SCHEMA}\n{dictionary.FORMAT}",
    )
    p.add_argument("model_dir", help="model directory (kfacel train's --out)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dictionary",
        metavar="F",
        help="search this dictionary alone: one a task of the model was prepared with "
        "(default: the union of every dictionary the model keeps; a model trained by "
        "an older kfacel keeps none and needs it)",
    )
    where.add_argument(
        "--ontology",
        metavar="NAME",
        help="search this ontology of the model alone (names: config.json's "
        "'ontologies'; default: all of them)",
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
        help="the ranker's arithmetic: auto (on the CPU: bfloat16 for the transformer "
        "where the CPU has bfloat16 units, else float32) or bfloat16 autocast",
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


def _rank(
    args: argparse.Namespace, queries: list[MentionQuery]
) -> list[list[LinkedConcept]]:
    """The model's ranking of each query's candidates (``kfacel.Linker``'s)."""
    from kfacel.linking.api import Linker

    linker = Linker.load(
        args.model_dir,
        ontology=args.ontology,
        dictionary=args.dictionary,
        precision=args.precision,
        progress=True,
        warn=lambda line: print(f"warning: {line}", file=sys.stderr),
    )
    return linker.rank(queries)


def _record(entry: QueryLine, ranked: list[LinkedConcept], top: int) -> dict[str, Any]:
    """The output object of one query line (see ``SCHEMA``)."""
    head = {} if entry.line is None else {"line": entry.line}
    if entry.query is None:
        return head | {"error": entry.error}
    if not ranked:
        return head | {"error": f"no candidate found for {entry.query.mention!r}"}
    start, end = entry.query.span()
    concepts = [r.to_json() for r in ranked[:top]]
    mention = {"mention": entry.query.mention, "start": start, "end": end}
    return head | mention | {"concepts": concepts}


def _where(args: argparse.Namespace, record: dict[str, Any]) -> str:
    return f"{args.input}:{record['line']}" if "line" in record else "--mention"


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
