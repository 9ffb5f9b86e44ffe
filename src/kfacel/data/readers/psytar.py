"""The PsyTAR workbook (CC BY 4.0): drug-review entities mapped to UMLS concepts.

Needs ``openpyxl`` (the ``xlsx`` extra), imported only when a workbook is read. The
``*_Mapped`` sheets (``ADR_Mapped``, ``WD-Mapped `` with its trailing space,
``SSI_Mapped``, ``DI_Mapped``) hold one entity a row: ``drug_id``, ``sentence_index``
(``sentence_id`` in ``WD-Mapped ``), the entity text, and ``UMLS1`` =
``CUI / name / semantic type``. The mention's context is its sentence, looked up by
(``drug_id``, sentence index) in ``Sentence_Labeling``; the mention is located in the
sentence case-insensitively (``"<when>, <entity>"`` rows by the part after the comma).
Skipped and counted: rows without an entity, rows whose
``UMLS1`` does not start with a CUI, rows whose sentence is missing, and entities not
found in their sentence. ``doc_id`` is the post (``drug_id``), the unit of a split.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from kfacel.data.records import Concept, Mention, SkipReport

_CUI = re.compile(r"^\s*(C\d{7})\s*/\s*(.*?)\s*(?:/\s*(.*?)\s*)?$", re.IGNORECASE)


def parse_umls_cell(cell: object) -> tuple[str, str, str | None] | None:
    """``(CUI, name, type)`` of a ``UMLS1`` cell, or None when it has no CUI.

    >>> parse_umls_cell("C0000765 / Excessive body weight gain / Finding")
    ('C0000765', 'Excessive body weight gain', 'Finding')
    >>> parse_umls_cell("weight gain") is None
    True
    """
    match = _CUI.match(str(cell or ""))
    if not match or not match.group(2):
        return None
    cui, name, kind = match.groups()
    return cui.upper(), name, kind or None


def _locate(text: str, surface: str) -> tuple[int, str]:
    """Where ``surface`` is in ``text`` (case-insensitive), and the part that was found.

    Some entities are written ``"<when>, <entity>"`` (``"first 10 days, nausea"``); when
    the whole is absent, the part after the last comma is looked for.

    >>> _locate("Like a panic attack with nausea.", "first 10 days, nausea")
    (25, 'nausea')
    """
    low = text.lower()
    for part in (surface, surface.rsplit(",", 1)[-1].strip()):
        start = low.find(part.lower()) if part else -1
        if start >= 0:
            return start, part
    return -1, surface


def _column(header: tuple[Any, ...], *names: str) -> int | None:
    cells = [str(h or "").strip().lower() for h in header]
    for name in names:
        if name in cells:
            return cells.index(name)
    return None


def read_psytar(
    path: Path | str, *, skips: SkipReport | None = None
) -> tuple[list[Mention], list[Concept]]:
    """The mapped mentions of a PsyTAR workbook and the concepts they are mapped to.

    Args:
        path: ``PsyTAR_dataset.xlsx``.
        skips: receives counts of skipped rows; ``where`` is ``file:sheet:row``.

    Returns:
        The mentions in sheet then row order, and the concepts (id = CUI, the first
        name seen as preferred, further names as synonyms) sorted by id.

    Raises:
        ValueError: when the file is not an .xlsx workbook, or the workbook lacks
            ``Sentence_Labeling`` or ``*_Mapped``.
        FileNotFoundError: when ``path`` does not exist.
    """
    from openpyxl import load_workbook  # optional dependency: the `xlsx` extra
    from openpyxl.utils.exceptions import InvalidFileException

    path = Path(path)
    skips = skips if skips is not None else SkipReport()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such workbook")
    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .xlsx workbook ({exc})") from None
    try:
        if "Sentence_Labeling" not in book.sheetnames:
            raise ValueError(f"{path}: no 'Sentence_Labeling' sheet")
        sentences = _sentences(book["Sentence_Labeling"].iter_rows(values_only=True))
        sheets = [s for s in book.sheetnames if s.strip().endswith("Mapped")]
        if not sheets:
            raise ValueError(f"{path}: no '*_Mapped' sheet")
        mentions: list[Mention] = []
        names: dict[str, dict[str, None]] = {}
        types: dict[str, str | None] = {}
        for sheet in sheets:
            rows = book[sheet].iter_rows(values_only=True)
            for m, name, kind in _sheet(path, sheet.strip(), rows, sentences, skips):
                mentions.append(m)
                names.setdefault(m.concept_ids[0], {})[name] = None
                types.setdefault(m.concept_ids[0], kind)
    finally:
        book.close()
    concepts = [Concept(i, tuple(names[i]), types[i]) for i in sorted(names)]
    return mentions, concepts


def _sentences(rows: Any) -> dict[tuple[str, int], str]:
    header = next(rows, ())
    drug, index = _column(header, "drug_id"), _column(header, "sentence_index")
    text = _column(header, "sentences", "sentence")
    if drug is None or index is None or text is None:
        raise ValueError("Sentence_Labeling: needs drug_id, sentence_index, sentences")
    out: dict[tuple[str, int], str] = {}
    for row in rows:
        try:
            out[(str(row[drug]).strip(), int(row[index]))] = str(row[text] or "")
        except (TypeError, ValueError, IndexError):
            continue
    return out


def _sheet(
    path: Path,
    sheet: str,
    rows: Any,
    sentences: dict[tuple[str, int], str],
    skips: SkipReport,
) -> Any:
    header = next(rows, ())
    drug = _column(header, "drug_id")
    index = _column(header, "sentence_index", "sentence_id")
    umls = _column(header, "umls1")
    if drug is None or index is None or umls is None:
        raise ValueError(f"{path}:{sheet}: needs drug_id, sentence_index, UMLS1")
    entity = 3  # the entity column is named after the sheet (ADRs, WDs, SSI, DIs)
    for rowno, row in enumerate(rows, start=2):
        where = f"{path}:{sheet}:{rowno}"
        surface = " ".join(str(row[entity] or "").split())
        if not surface:
            skips.add("PsyTAR row without an entity", where)
            continue
        parsed = parse_umls_cell(row[umls])
        if parsed is None:
            skips.add("PsyTAR UMLS1 cell without a CUI", where)
            continue
        try:
            text = sentences[(str(row[drug]).strip(), int(row[index]))]
        except (KeyError, TypeError, ValueError):
            skips.add("PsyTAR sentence not found", where)
            continue
        start, found = _locate(text, surface)
        if start < 0:
            skips.add("PsyTAR entity not found in its sentence", where)
            continue
        if found != surface:
            skips.repair(
                "PsyTAR entity located by its part after the last comma", where
            )
        cui, name, kind = parsed
        end = start + len(found)
        mention = Mention(
            doc_id=str(row[drug]).strip(),
            text=text,
            spans=((start, end),),
            surface=text[start:end],
            concept_ids=(cui,),
            source=f"{path}:{sheet}",
            line=rowno,
        )
        yield mention, name, kind
