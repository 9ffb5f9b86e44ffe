"""PubTator corpora (MedMentions, NCBI Disease, any other), plain or gzip-compressed.

A document is a title line ``PMID|t|title``, an abstract line ``PMID|a|abstract`` and
one annotation a line::

    PMID<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>id[<TAB>...]

Offsets are 0-based into ``title + " " + abstract``; documents are separated by blank
lines. Quirks that are accepted (and counted in the ``SkipReport``):

- ids are normalized with :func:`~kfacel.data.records.normalize_id` (stray spaces,
  ``UMLS:`` and ``MESH:`` prefixes dropped, ``OMIM:`` kept);
- composite ids joined by ``|`` or ``+`` become several ``concept_ids`` (what a task
  does with them is the task builder's policy);
- an annotation whose offsets do not select its mention text is realigned to the
  nearest occurrence of that text within 100 characters (counted as repaired), and
  skipped when there is none; offsets outside the text are skipped;
- relation lines (``PMID<TAB>CID<TAB>...``), annotations without an id (``-1`` or
  empty), malformed lines and annotations before any text are skipped and counted;
- CRLF line ends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from kfacel.data.readers.lines import text_lines
from kfacel.data.records import Mention, SkipReport, normalize_id

logger = logging.getLogger(__name__)

FORMAT = """\
PubTator corpus (--train/--dev/--test F, --corpus F): documents separated by blank lines
  PMID|t|title
  PMID|a|abstract
  PMID<TAB>START<TAB>END<TAB>MENTION<TAB>TYPE<TAB>ID[<TAB>...]
  START/END are 0-based character offsets into title + " " + abstract; ID is a concept
  id (UMLS:/MESH: dropped), several joined by '|' or '+' for a composite mention, which
  a task skips and counts (a query has one gold). Offsets that miss their mention by
  up to 100 characters are realigned (counted as repaired); relation lines, ids of -1,
  unreadable offsets and mentions not in the text are skipped and counted. UTF-8,
  CRLF or LF; a name ending in .gz is read through gzip.
"""

_TEXT_LINE = re.compile(r"^([^|\t]+)\|([ta])\|(.*)$")
_ID_SEPARATORS = re.compile(r"[|+]")
REALIGN_WINDOW = 100
"""How far (characters) from the given offsets a mismatching mention is looked for."""


def split_ids(raw: str) -> tuple[str, ...]:
    """Normalized ids of an id column, composite ids split on ``|`` and ``+``.

    >>> split_ids(" D015862+D058499")
    ('D015862', 'D058499')
    >>> split_ids("UMLS:C0011849")
    ('C0011849',)
    """
    ids = (normalize_id(part) for part in _ID_SEPARATORS.split(raw))
    return tuple(i for i in ids if i and i != "-1")


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _align(text: str, start: int, end: int, surface: str) -> tuple[int, int] | None:
    """Offsets of ``surface`` at or nearest to ``start``, or None when it is absent."""
    if _same(text[start:end], surface):
        return start, end
    target = surface.strip()
    if not target:
        return None
    lo = max(0, start - REALIGN_WINDOW)
    hi = min(len(text), end + REALIGN_WINDOW)
    hits = [m.start() + lo for m in re.finditer(re.escape(target), text[lo:hi])]
    if not hits:
        return None
    best = min(hits, key=lambda h: (abs(h - start), h))
    return best, best + len(target)


def read_pubtator(
    path: Path | str, *, skips: SkipReport | None = None
) -> Iterator[Mention]:
    """Yield the mentions of a PubTator file, each with its document's text.

    Args:
        path: a PubTator file, plain or ``.gz``.
        skips: receives counts of what was skipped or repaired, and where.

    Yields:
        One ``Mention`` per usable annotation line, in file order.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming file and line of bytes that are not UTF-8.
    """
    path = Path(path)
    skips = skips if skips is not None else SkipReport()
    doc_id, title, abstract = "", None, None
    for lineno, line in text_lines(path):
        where = f"{path}:{lineno}"
        if not line.strip():
            doc_id, title, abstract = "", None, None
            continue
        head = _TEXT_LINE.match(line)
        if head:
            pmid, kind, body = head.groups()
            if pmid != doc_id:
                doc_id, title, abstract = pmid, None, None
            if kind == "t":
                title = body
            else:
                abstract = body
            continue
        mention = _parse_annotation(line, doc_id, title, abstract, where, skips)
        if mention is not None:
            mention = replace(mention, source=str(path), line=lineno)
            yield mention


def _parse_annotation(
    line: str,
    doc_id: str,
    title: str | None,
    abstract: str | None,
    where: str,
    skips: SkipReport,
) -> Mention | None:
    cols = line.split("\t")
    if len(cols) >= 2 and not cols[1].strip().lstrip("-").isdigit():
        skips.add("relation or non-mention line", where)
        return None
    if len(cols) < 5:
        skips.add("malformed line (fewer than 5 tab-separated fields)", where)
        return None
    try:
        start, end = int(cols[1]), int(cols[2])
    except ValueError:
        skips.add("malformed line (offsets are not integers)", where)
        return None
    if title is None or cols[0].strip() != doc_id:
        skips.add(
            "annotation outside its document (no title/abstract before it)", where
        )
        return None
    text = title if abstract is None else f"{title} {abstract}"
    ids = split_ids(cols[5]) if len(cols) > 5 else ()
    if not ids:
        skips.add("annotation without a concept id", where)
        return None
    if not 0 <= start < end <= len(text):
        skips.add("offsets outside the document text", where)
        return None
    surface = cols[3]
    aligned = _align(text, start, end, surface)
    if aligned is None:
        skips.add("offsets do not match the mention text", where)
        return None
    if aligned == (start, end) and text[start:end] != surface:
        skips.repair("mention text differs from its offsets only in spacing", where)
    elif aligned != (start, end):
        skips.repair("offsets realigned to the mention text", where)
        logger.debug(
            "%s: realigned %r from %d to %d", where, surface, start, aligned[0]
        )
    start, end = aligned
    return Mention(
        doc_id=doc_id,
        text=text,
        spans=((start, end),),
        surface=text[start:end],
        concept_ids=ids,
        semantic_type=cols[4].strip() or None,
    )
