"""``kfacel link``: rank a dictionary's concepts for mentions in text."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from kfacel.cli import UserError
from kfacel.cli._args import positive_int
from kfacel.data.candidates import (
    RETRIEVAL_METHODS,
    CandidateGenerator,
    build_generator,
    dictionary_digest,
)
from kfacel.data.dense import SentenceEncoder
from kfacel.data.readers import read_dictionary
from kfacel.data.tasks import ranker_reads_retrieval_text
from kfacel.training.linking import MentionQuery, link, read_queries
from kfacel.training.pipeline import RETRIEVAL_FILE, Linker, load_linker
from kfacel.training.precision import PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``link`` subcommand."""
    p = subparsers.add_parser("link", help="link mentions to dictionary concepts")
    p.add_argument("model_dir", help="model directory")
    p.add_argument("--dictionary", required=True, help="concept dictionary file")
    p.add_argument("--text", help="the text the mention is in")
    p.add_argument("--mention", help="the mention (first occurrence in --text)")
    p.add_argument(
        "--input", help='JSONL, one {"text", "mention"[, "start"]} object a line'
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
    if args.threads:
        torch.set_num_threads(args.threads)
    queries = _queries(args)
    linker = load_linker(args.model_dir)
    task = linker.meta.get("task", {})
    cands = task.get("candidates", {})
    generator = _generator(args, linker, cands)
    results = link(
        linker,
        generator,
        queries,
        num_candidates=int(cands.get("num_candidates", 10)),
        context_words=int(task.get("context_words", 10)),
        synonyms=bool(cands.get("synonyms", False)),  # older tasks: preferred names
        as_retrieved=ranker_reads_retrieval_text(cands),  # older tasks: as written
        precision=args.precision,
    )
    for q, ranked in zip(queries, results, strict=True):
        top = [
            {"id": r.id, "name": r.name, "score": round(r.score, 4)}
            | ({"synonym": r.synonym} if r.synonym else {})
            for r in ranked[: args.top]
        ]
        print(json.dumps({"mention": q.mention, "concepts": top}, ensure_ascii=False))
    return 0


def _generator(
    args: argparse.Namespace, linker: Linker, cands: dict[str, Any]
) -> CandidateGenerator:
    """The model's candidate generator over ``--dictionary``, checked against training.

    Raises:
        UserError: when the dictionary differs from the one the model's task was built
            with (its digest is recorded), or a retrieval model lacks its alias table.
    """
    concepts = read_dictionary(args.dictionary)
    expected = cands.get("dictionary_sha256")
    if expected and dictionary_digest(concepts) != expected:
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


def _queries(args: argparse.Namespace) -> list[MentionQuery]:
    if args.input:
        return read_queries(args.input)
    if args.text is None or args.mention is None:
        raise UserError("give --text and --mention, or --input F.jsonl")
    try:
        q = MentionQuery(args.text, args.mention)
        q.span()
    except ValueError as exc:
        raise UserError(f"--mention: {exc}") from None
    return [q]
