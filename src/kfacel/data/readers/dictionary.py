"""Concept dictionaries: the generic TSV, and auto-detection between TSV and MEDIC.

The generic TSV has one line per name, ``id<TAB>…<TAB>name``: the first column is the
concept id and the last the name; with three or more columns the second is the concept's
semantic type (as in MedMentions' ``CUI<TAB>TUI<TAB>name``). A repeated id adds a
synonym (its first line gives the preferred name and type). CRLF line ends, a UTF-8
BOM, blank lines and ``#`` comment lines are accepted; a line with a single column, an
empty id or name, or a name without a letter or digit ("---") is skipped and counted.
A line with fewer columns than the first content line (``CUI<TAB>TUI`` in a
``CUI<TAB>TUI<TAB>name`` file) has lost its name column and is refused, naming the file
and line, rather than read with its type as the name. A file whose columns look swapped
(``name<TAB>id``: the first column looks like names and the last like ids on most of its
first lines, by ``looks_like_id``) is refused with that hint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kfacel.data.readers.lines import text_lines
from kfacel.data.readers.medic import is_medic_line, read_medic
from kfacel.data.records import Concept, SkipReport, has_letter_or_digit, normalize_id

FORMAT = """\
dictionary (--dictionary F): a TSV or a MEDIC file, told apart by their content
  TSV, one name a line: ID<TAB>NAME, or ID<TAB>TYPE<TAB>NAME (MedMentions' CUI, TUI, name)
    D003920<TAB>Diabetes Mellitus
    D003920<TAB>diabetes
  The first column is the concept id (UMLS:/MESH: prefixes dropped), the last its name,
  a middle one its semantic type. A repeated id adds a synonym; the id's first line
  gives the preferred name and the type. Blank lines and lines starting with '#' are
  ignored; a line without a tab, with an empty id or name, or a name without a letter
  or digit is skipped and counted; a line with fewer columns than the first is refused,
  and so is a file whose first column holds names and last ids (NAME<TAB>ID).
  MEDIC (CTD): IDS||NAMES a line, ids and names each joined by '|'; the first id is the
  concept's, the others its alternative ids; the first name is the preferred one.
  UTF-8 (a BOM is fine), CRLF or LF; a name ending in .gz is read through gzip.
"""

SWAP_SAMPLE = 200
"""Content lines whose columns the swap check looks at (the first ones)."""
SWAP_SHARE = 0.9
"""Share of them that must look like ``name<TAB>id`` for the file to be refused."""


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
    sample: list[
        tuple[int, str, str]
    ] = []  # (line, first, last column) for the swap check
    for lineno, line in text_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        where = f"{path}:{lineno}"
        if len(cols) < 2:
            skips.add("malformed dictionary line (no tab)", where)
            continue
        width = width or len(cols)
        if len(sample) < SWAP_SAMPLE:
            sample.append((lineno, cols[0].strip(), cols[-1].strip()))
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
    _check_not_swapped(path, sample)
    for ident, ns in names.items():
        yield Concept(id=ident, names=tuple(ns), semantic_type=types[ident])


def looks_like_id(text: str) -> bool:
    """Whether a column value looks like a concept id: one token with a digit in it.

    Ids (``D012345``, ``MESH:D012345``, ``C0012345``, ``HP:0001250``, ``12345``) are one
    token of at most 40 characters with a digit; names mostly have spaces or no digit.

    >>> looks_like_id("MESH:D012345"), looks_like_id("C0012345"), looks_like_id("164400")
    (True, True, True)
    >>> looks_like_id("Diabetes Mellitus"), looks_like_id("asthma")
    (False, False)
    """
    return (
        0 < len(text) <= 40
        and not any(c.isspace() for c in text)
        and any(c.isdigit() for c in text)
    )


def _check_not_swapped(path: Path, sample: list[tuple[int, str, str]]) -> None:
    """Refuse a dictionary whose first column looks like names and last like ids.

    Raises:
        ValueError: naming the file and its first content line, when at least
            ``SWAP_SHARE`` of the sampled lines read ``name<TAB>id``.
    """
    swapped = [
        (lineno, first, last)
        for lineno, first, last in sample
        if looks_like_id(last) and not looks_like_id(first)
    ]
    if not sample or len(swapped) < SWAP_SHARE * len(sample):
        return
    lineno, first, last = sample[0]
    raise ValueError(
        f"{path}:{lineno}: the first column looks like names and the last like concept "
        f"ids ({first!r}, {last!r}; {len(swapped)} of the first {len(sample)} lines): "
        "a TSV dictionary is ID<TAB>NAME or ID<TAB>TYPE<TAB>NAME; swap the columns"
    )


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
