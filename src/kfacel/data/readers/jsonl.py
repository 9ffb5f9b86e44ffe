"""A generic JSONL of mentions, for a user's own annotated data.

One JSON object a line, one line per mention::

    {"doc_id": "d1", "text": "Patient denies chest pain.", "spans": [[15, 25]],
     "concept_ids": ["C0008031"], "split": "train"}

Fields:

- ``text`` (string, required): the document (or sentence) the mention is in.
- ``spans`` (list of ``[start, end]``, required unless ``mention`` is given): 0-based
  character offsets into ``text``, several for a discontiguous mention.
- ``mention`` (string, optional): the mention text; when ``spans`` is absent its first
  occurrence in ``text`` is used.
- ``concept_id`` (string) or ``concept_ids`` (list of strings), required: the gold
  concept(s); ids are normalized like the other readers' (``UMLS:``/``MESH:`` dropped).
- ``doc_id`` (string, optional, default ``"line<N>"``): documents are split as units.
- ``type`` (string, optional): the mention's semantic type.
- ``split`` (``"train"|"dev"|"test"``, optional): a split given by the user.

Blank lines are ignored; a UTF-8 BOM is read as one. A line that is not JSON, not an
object, lacks a required field or repeats a concept id raises ``ValueError`` naming the
file and line (a user's own file should be fixed, not silently shortened); spans outside
the text and mentions not found in the text are skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kfacel.data.readers.lines import text_lines
from kfacel.data.records import Mention, SkipReport, normalize_id

SPLITS = ("train", "dev", "test")


def _ids(obj: dict[str, Any], where: str) -> tuple[str, ...]:
    raw = obj.get("concept_ids", obj.get("concept_id"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: needs 'concept_id' or a non-empty 'concept_ids'")
    ids = tuple(normalize_id(str(r)) for r in raw if str(r).strip())
    if not ids:
        raise ValueError(f"{where}: the concept ids are empty")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{where}: concept id {repeated[0]!r} is given twice")
    return ids


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _spans(obj: dict[str, Any], text: str, where: str) -> tuple[tuple[int, int], ...]:
    if "spans" in obj:
        spans = obj["spans"]
        if not isinstance(spans, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(map(_is_int, s)) for s in spans
        ):
            raise ValueError(
                f"{where}: 'spans' must be a list of [start, end] integer pairs"
            )
        return tuple((b, e) for b, e in spans)
    if "mention" not in obj:
        raise ValueError(f"{where}: needs 'spans' or 'mention'")
    mention = obj["mention"]
    if not isinstance(mention, str) or not mention.strip():
        raise ValueError(f"{where}: 'mention' must be non-blank text, got {mention!r}")
    start = text.find(mention)
    return () if start < 0 else ((start, start + len(mention)),)


def read_jsonl_mentions(
    path: Path | str, *, skips: SkipReport | None = None
) -> Iterator[tuple[Mention, str | None]]:
    """Yield each mention of a generic JSONL file with its ``split`` (or None).

    Args:
        path: the JSONL file (UTF-8).
        skips: receives counts of skipped mentions.

    Yields:
        ``(mention, split)`` pairs in file order.

    Raises:
        ValueError: naming the file and line of a malformed line.
    """
    path = Path(path)
    skips = skips if skips is not None else SkipReport()
    for lineno, raw in text_lines(path):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON: {exc.msg}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"{where}: expected an object with a string 'text'")
        text = obj["text"]
        ids = _ids(obj, where)
        spans = _spans(obj, text, where)
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{where}: 'split' must be one of {SPLITS}")
        if not spans:
            skips.add("mention not found in its text", where)
            continue
        if any(not 0 <= b < e <= len(text) for b, e in spans):
            skips.add("spans outside the text", where)
            continue
        spans = tuple(sorted(spans))
        yield (
            Mention(
                doc_id=str(obj.get("doc_id", f"line{lineno}")),
                text=text,
                spans=spans,
                surface=" ".join(text[b:e] for b, e in spans),
                concept_ids=ids,
                semantic_type=obj.get("type"),
                source=str(path),
                line=lineno,
            ),
            split,
        )
