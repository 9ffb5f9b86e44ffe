"""The CTD MEDIC disease vocabulary: one concept a line, ``IDS||NAMES``.

``IDS`` is one or more ids joined by ``|`` (MeSH ids without prefix, OMIM numbers as
bare digits) and ``NAMES`` the preferred name then synonyms joined by ``|``. Ids are
normalized as the corpora write them: bare digits become ``OMIM:<digits>``, ``MESH:`` is
dropped. The first id of a line is the concept id; further ids are its ``alt_ids`` (a
quarter of NCBI Disease's gold ids are such alternative ids). Blank lines are ignored;
a line without ``||`` is skipped and counted; an id already seen on an earlier line is
dropped from the later line (counted), and a line left without ids is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kfacel.data.readers.lines import text_lines
from kfacel.data.records import Concept, SkipReport, normalize_id


def medic_id(raw: str) -> str:
    """A MEDIC id as NCBI Disease writes it.

    >>> medic_id("613097"), medic_id("MESH:D003110"), medic_id("C565588")
    ('OMIM:613097', 'D003110', 'C565588')
    """
    ident = normalize_id(raw)
    return f"OMIM:{ident}" if ident.isdigit() else ident


def is_medic_line(line: str) -> bool:
    """Whether ``line`` looks like a MEDIC line (ids, ``||``, names; no tab)."""
    head, sep, _ = line.partition("||")
    return bool(sep) and "\t" not in line and bool(head.strip())


def read_medic(
    path: Path | str, *, skips: SkipReport | None = None
) -> Iterator[Concept]:
    """Yield the concepts of a MEDIC vocabulary file.

    Args:
        path: the vocabulary, UTF-8, ``IDS||NAMES`` a line (CRLF and a BOM tolerated).
        skips: receives counts of skipped lines and where the first one is.

    Yields:
        One ``Concept`` per line, names deduplicated in their order of appearance.
    """
    path = Path(path)
    skips = skips if skips is not None else SkipReport()
    seen: set[str] = set()
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if not is_medic_line(line):
            skips.add("malformed MEDIC line (no 'IDS||NAMES')", where)
            continue
        head, _, tail = line.partition("||")
        names = tuple(dict.fromkeys(n.strip() for n in tail.split("|") if n.strip()))
        if not names:
            skips.add("MEDIC line without names", where)
            continue
        ids = []
        for ident in (medic_id(i) for i in head.split("|") if i.strip()):
            if ident in seen:
                skips.add("repeated MEDIC id (first line kept)", where)
                continue
            seen.add(ident)
            ids.append(ident)
        if ids:
            yield Concept(id=ids[0], names=names, alt_ids=tuple(ids[1:]))
