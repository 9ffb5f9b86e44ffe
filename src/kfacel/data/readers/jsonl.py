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
  concept; ids are normalized like the other readers' (``UMLS:``/``MESH:`` dropped) and,
  as in PubTator, an id joined by ``|`` or ``+`` is several ids.
- ``doc_id`` (string, optional, default ``"line<N>"``): documents are split as units.
- ``type`` (string, optional): the mention's semantic type.
- ``split`` (``"train"|"dev"|"test"``, optional): a split given by the user.

Blank lines are ignored; a UTF-8 BOM is read as one. A line that is not JSON, not an
object, lacks a required field or repeats a concept id raises ``ValueError`` naming the
file and line (a user's own file should be fixed, not silently shortened); spans outside
the text and mentions not found in the text are skipped and counted.

A mention with several concept ids (a composite mention, ``["D1", "D2"]`` or ``"D1|D2"``)
cannot become a query, which has one gold concept: by default the file is refused once it
has been read, with the number of such mentions and the line of the first; with
``composite="skip"`` they are skipped and counted like the PubTator reader's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kfacel.data.readers.lines import text_lines
from kfacel.data.readers.pubtator import split_ids
from kfacel.data.records import Mention, SkipReport

SPLITS = ("train", "dev", "test")
COMPOSITE = ("refuse", "skip")
"""What ``read_jsonl_mentions`` does with a mention of several concept ids."""
COMPOSITE_REASON = "composite mention (several concept ids)"

FORMAT = """\
JSONL mentions (--input F): one JSON object a line, one line per mention
  {"doc_id": "d1", "text": "Patient denies chest pain.", "spans": [[15, 25]],
   "concept_id": "C0008031", "split": "train"}
  text        (required) the document or sentence the mention is in
  spans       [[start, end], ...] 0-based character offsets into text, several for a
              discontiguous mention; required unless mention is given
  mention     the mention's text; without spans, its first occurrence in text
  concept_id  the gold concept id (UMLS:/MESH: prefixes dropped); or concept_ids,
              a list. Several ids ("D1|D2", ["D1", "D2"]) make a composite mention:
              a query has one gold, so the file is refused naming how many and the
              first line (--composite skip leaves them out, counted)
  doc_id      documents are split as units (default: line<N>)
  type        the mention's semantic type (optional)
  split       train, dev or test: on every line or on none (then --split-by-document)
  UTF-8; blank lines ignored. A line that is not such an object is refused naming file
  and line; spans outside the text and mentions not in it are skipped and counted.
"""


def _ids(obj: dict[str, Any], where: str) -> tuple[str, ...]:
    raw = obj.get("concept_ids", obj.get("concept_id"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: needs 'concept_id' or a non-empty 'concept_ids'")
    ids = tuple(i for r in raw for i in split_ids(str(r)))
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
    path: Path | str, *, skips: SkipReport | None = None, composite: str = "refuse"
) -> Iterator[tuple[Mention, str | None]]:
    """Yield each mention of a generic JSONL file with its ``split`` (or None).

    Args:
        path: the JSONL file (UTF-8).
        skips: receives counts of skipped mentions.
        composite: a mention with several concept ids: ``"refuse"`` the file after
            reading it, or ``"skip"`` the mention (counted in ``skips``).

    Yields:
        ``(mention, split)`` pairs in file order.

    Raises:
        ValueError: naming the file and line of a malformed line, or the number of
            composite mentions and the line of the first (``composite="refuse"``).
    """
    if composite not in COMPOSITE:
        raise ValueError(f"composite must be one of {COMPOSITE}, got {composite!r}")
    path = Path(path)
    skips = skips if skips is not None else SkipReport()
    found = SkipReport()  # the composite mentions, counted apart
    for mention, split in _mentions(path, skips):
        if len(mention.concept_ids) > 1:
            (skips if composite == "skip" else found).add(
                COMPOSITE_REASON, f"{path}:{mention.line}"
            )
            continue
        yield mention, split
    if found.total:
        raise ValueError(_composite_error(found))


def _composite_error(found: SkipReport) -> str:
    """The one line refusing a file with composite mentions."""
    n, where = found.counts[COMPOSITE_REASON], found.first[COMPOSITE_REASON]
    return (
        f"{where}: {n} mention{'s' * (n != 1)} with several concept ids, the first "
        "here: a query has one gold concept; give each mention one concept id, or "
        "leave them out (kfacel prepare jsonl --composite skip)"
    )


def _mentions(path: Path, skips: SkipReport) -> Iterator[tuple[Mention, str | None]]:
    """Every mention of the file with its split; refuses malformed lines."""
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
