"""``kfacel link``: rank a dictionary's concepts for mentions in text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kfacel.cli import UserError
from kfacel.data.candidates import build_generator
from kfacel.data.readers import read_dictionary
from kfacel.training.linking import MentionQuery, link
from kfacel.training.pipeline import load_linker


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
    p.add_argument("--top", type=int, default=5, help="concepts to print per mention")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the ranked concepts of each mention as JSON lines."""
    if args.threads:
        torch.set_num_threads(args.threads)
    queries = _queries(args)
    linker = load_linker(args.model_dir)
    task = linker.meta.get("task", {})
    cands = task.get("candidates", {})
    generator = build_generator(
        cands.get("method", "tfidf"), read_dictionary(args.dictionary)
    )
    results = link(
        linker,
        generator,
        queries,
        num_candidates=int(cands.get("num_candidates", 10)),
        context_words=int(task.get("context_words", 10)),
        synonyms=bool(cands.get("synonyms", False)),  # older tasks: preferred names
    )
    for q, ranked in zip(queries, results, strict=True):
        top = [
            {"id": r.id, "name": r.name, "score": round(r.score, 4)}
            | ({"synonym": r.synonym} if r.synonym else {})
            for r in ranked[: args.top]
        ]
        print(json.dumps({"mention": q.mention, "concepts": top}, ensure_ascii=False))
    return 0


def _queries(args: argparse.Namespace) -> list[MentionQuery]:
    if args.input:
        out = []
        path = Path(args.input)
        for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                q = MentionQuery(
                    str(obj["text"]), str(obj["mention"]), obj.get("start")
                )
                q.span()
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{path}:{lineno}: {exc}") from None
            out.append(q)
        if not out:
            raise UserError(f"{path}: no mention to link")
        return out
    if not (args.text and args.mention):
        raise UserError("give --text and --mention, or --input F.jsonl")
    q = MentionQuery(args.text, args.mention)
    try:
        q.span()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return [q]
