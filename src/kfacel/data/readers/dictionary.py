"""Concept dictionaries: the generic TSV, and auto-detection between TSV and MEDIC.

The generic TSV has one line per name, ``id<TAB>…<TAB>name``: the first column is the
concept id and the last the name; with three or more columns the second is the concept's
semantic type (as in MedMentions' ``CUI<TAB>TUI<TAB>name``). A repeated id adds a
synonym (its first line gives the preferred name and type). CRLF line ends, a UTF-8
BOM, blank lines and ``#`` comment lines are accepted; a line with a single column, an
empty id or name, or a name without a letter or digit ("---") is skipped and counted.
A line with fewer columns than the first content line (``CUI<TAB>TUI`` in a
``CUI<TAB>TUI<TAB>name`` file) has lost its name column and is refused, naming the file
and line, rather than read with its type as the name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kfacel.data.readers.lines import text_lines
from kfacel.data.readers.medic import is_medic_line, read_medic
from kfacel.data.records import Concept, SkipReport, has_letter_or_digit, normalize_id


def read_tsv_dictionary(
    path: Path | str, *, skips: SkipReport | None = None
) -> Iterator[Concept]:
    """Yield the concepts of a TSV dictionary in order of their first line.

    Args:
        path: the TSV file (UTF-8).
        skips: receives counts of skipped lines and where the first one is.

    Yields:
        One ``Concept`` per distinct id, all its names in order, duplicates removed.

    Raises:
        ValueError: naming file and line of a line that lost its name column, or of
            bytes that are not UTF-8.
    """
    path = Path(path)
    skips = skips if skips is not None else SkipReport()
    names: dict[str, dict[str, None]] = {}
    types: dict[str, str | None] = {}
    width = 0  # columns of the first content line
    for lineno, line in text_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        where = f"{path}:{lineno}"
        if len(cols) < 2:
            skips.add("malformed dictionary line (no tab)", where)
            continue
        width = width or len(cols)
        if len(cols) < width:
            raise ValueError(
                f"{where}: {len(cols)} columns where the dictionary has {width} "
                "(id<TAB>type<TAB>name): the name column is missing"
            )
        ident, name = normalize_id(cols[0]), " ".join(cols[-1].split())
        if not ident or not name:
            skips.add("dictionary line with an empty id or name", where)
            continue
        if not has_letter_or_digit(name):  # "---": nothing to retrieve by
            skips.add("dictionary name without a letter or digit", where)
            continue
        if ident not in names:
            names[ident] = {}
            types[ident] = cols[1].strip() or None if len(cols) >= 3 else None
        names[ident][name] = None
    for ident, ns in names.items():
        yield Concept(id=ident, names=tuple(ns), semantic_type=types[ident])


def detect_format(path: Path) -> str:
    """``"tsv"`` or ``"medic"`` from the first content line of ``path``.

    Raises:
        ValueError: naming the file and line when it is neither.
    """
    for lineno, line in text_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        if is_medic_line(line):
            return "medic"
        if "\t" in line:
            return "tsv"
        raise ValueError(
            f"{path}:{lineno}: not a concept dictionary line (expected "
            "'id<TAB>...<TAB>name' or MEDIC 'IDS||NAMES')"
        )
    raise ValueError(f"{path}: the dictionary is empty")


def read_dictionary(
    path: Path | str, *, skips: SkipReport | None = None
) -> list[Concept]:
    """All concepts of a TSV or MEDIC dictionary, the format detected from its content.

    Args:
        path: the dictionary file.
        skips: receives counts of skipped lines.

    Returns:
        The concepts in file order.

    Raises:
        ValueError: when the format is unknown or no concept could be read.
        FileNotFoundError: when ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dictionary file")
    reader = read_medic if detect_format(path) == "medic" else read_tsv_dictionary
    concepts = list(reader(path, skips=skips))
    if not concepts:
        raise ValueError(f"{path}: no concept could be read from the dictionary")
    return concepts
