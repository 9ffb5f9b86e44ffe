"""The CADEC JSON of MedNorm: forum posts with ADR mentions labelled by MedDRA PT names.

The file is a JSON list of posts::

    {"meta": {"fileName": "LIPITOR.820.ann"}, "raw": <post text>,
     "objects": {"MedEntity": [{"xmiID": ..., "spans": [{"begin": b, "end": e}, ...],
                                "text": ..., "MedDRA": <PT name or "">}, ...]}}

The concept id of a mention is its MedDRA PT name (the file has no codes). A
mention's ``spans`` are authoritative (``text`` does not always match them); its
surface is the span substrings joined by a space. Mentions with an empty ``MedDRA``
label and spans outside the post are skipped and counted; a post without ``raw``
is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kfacel.data.readers.lines import read_text
from kfacel.data.records import Concept, Mention, SkipReport


def _spans(entity: dict[str, Any], n: int) -> tuple[tuple[int, int], ...] | None:
    try:
        spans = tuple(sorted((int(s["begin"]), int(s["end"])) for s in entity["spans"]))
    except (KeyError, TypeError, ValueError):
        return None
    if not spans or any(not 0 <= b < e <= n for b, e in spans):
        return None
    return spans


def read_cadec(
    path: Path | str, *, skips: SkipReport | None = None
) -> Iterator[Mention]:
    """Yield the labelled mentions of a CADEC JSON file, post by post.

    Args:
        path: the JSON file.
        skips: receives counts of what was skipped; ``where`` is ``file:post#i``.

    Yields:
        One ``Mention`` per labelled entity; ``doc_id`` is the post's file name.

    Raises:
        ValueError: when the file is not UTF-8 or not a JSON list of posts.
    """
    path = Path(path)
    skips = skips if skips is not None else SkipReport()
    try:
        posts = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(posts, list):
        raise ValueError(f"{path}: expected a JSON list of posts")
    for i, post in enumerate(posts):
        where = f"{path}:post#{i}"
        text = post.get("raw") if isinstance(post, dict) else None
        if not isinstance(text, str):
            skips.add("post without 'raw' text", where)
            continue
        doc_id = str(post.get("meta", {}).get("fileName", f"post{i}"))
        entities = post.get("objects", {}).get("MedEntity", []) or []
        for entity in entities:
            label = str(entity.get("MedDRA") or "").strip()
            if not label:
                skips.add("mention without a MedDRA label", where)
                continue
            spans = _spans(entity, len(text))
            if spans is None:
                skips.add("mention spans missing or outside the post", where)
                continue
            if len(spans) > 1:
                skips.repair("discontiguous mention (spans joined)", where)
            yield Mention(
                doc_id=doc_id,
                text=text,
                spans=spans,
                surface=" ".join(" ".join(text[b:e].split()) for b, e in spans),
                concept_ids=(label,),
                source=str(path),
                line=i,
            )


def cadec_concepts(mentions: Iterator[Mention] | list[Mention]) -> list[Concept]:
    """The PT names labelled in ``mentions`` as concepts (id = name), sorted by id."""
    ids = sorted({cid for m in mentions for cid in m.concept_ids})
    return [Concept(id=i, names=(i,)) for i in ids]
