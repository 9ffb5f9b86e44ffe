"""Readers on hand-written fixtures: each quirk parsed, repaired or skipped."""

import gzip
import shutil
from pathlib import Path

import pytest

from kfacel.data.readers import (
    cadec_concepts,
    read_cadec,
    read_dictionary,
    read_jsonl_mentions,
    read_medic,
    read_psytar,
    read_pubtator,
    read_tsv_dictionary,
)
from kfacel.data.records import SkipReport, normalize_id


def test_normalize_id_strips_spaces_and_prefixes() -> None:
    assert normalize_id(" UMLS:C0011849 ") == "C0011849"
    assert normalize_id("MESH:D003920") == "D003920"
    assert normalize_id("OMIM: 143100") == "OMIM:143100"


def _pubtator(path: Path) -> tuple[list, SkipReport]:
    skips = SkipReport()
    return list(read_pubtator(path, skips=skips)), skips


def test_pubtator_parses_quirks_and_counts_skips(fixtures: Path) -> None:
    mentions, skips = _pubtator(fixtures / "mini_pubtator.txt")
    by_surface = {m.surface: m for m in mentions}
    assert by_surface["Cystic fibrosis"].concept_ids == ("C0010674",)
    assert by_surface["diabetes"].concept_ids == ("D003920",)  # stray spaces, MESH:
    assert by_surface["breast and ovarian cancer"].concept_ids == ("D001943", "D010051")
    assert by_surface["pain"].concept_ids == ("D010146", "D000001")  # '+' joined
    fever = by_surface["fever"]
    assert fever.text[fever.spans[0][0] : fever.spans[0][1]] == "fever"  # realigned
    assert [m.concept_ids for m in mentions if m.doc_id == "200"] == [
        ("OMIM:143100",),
        ("D006816",),
    ]
    assert all(m.text.startswith("Cystic") for m in mentions if m.doc_id == "100")
    assert all("\r" not in m.text for m in mentions)
    assert skips.counts == {
        "offsets outside the document text": 1,
        "relation or non-mention line": 1,
        "malformed line (fewer than 5 tab-separated fields)": 1,
        "offsets do not match the mention text": 1,
        "annotation without a concept id": 1,
    }
    assert skips.repaired == {
        "offsets realigned to the mention text": 1,
        "mention text differs from its offsets only in spacing": 1,
    }
    assert skips.first["offsets outside the document text"].endswith(
        "mini_pubtator.txt:8"
    )
    assert mentions[0].line == 3


def test_pubtator_reads_gzip_like_plain(fixtures: Path, tmp_path: Path) -> None:
    gz = tmp_path / "mini.txt.gz"
    with (fixtures / "mini_pubtator.txt").open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain, _ = _pubtator(fixtures / "mini_pubtator.txt")
    packed, _ = _pubtator(gz)
    assert [(m.surface, m.spans, m.concept_ids) for m in plain] == [
        (m.surface, m.spans, m.concept_ids) for m in packed
    ]


def test_tsv_dictionary_synonyms_types_and_crlf(fixtures: Path) -> None:
    skips = SkipReport()
    concepts = {
        c.id: c for c in read_tsv_dictionary(fixtures / "dict.tsv", skips=skips)
    }
    assert concepts["C0010674"].names == ("Cystic Fibrosis", "Mucoviscidosis")
    assert concepts["C0010674"].semantic_type == "T047"
    assert concepts["C0015967"].names == ("Fever", "Pyrexia")
    assert concepts["C0030193"].semantic_type is None
    assert "C0006142" in concepts  # UMLS: prefix dropped
    assert skips.counts == {
        "malformed dictionary line (no tab)": 1,
        "dictionary line with an empty id or name": 1,
    }


def test_tsv_dictionary_drops_duplicates_and_names_without_letters(tmp_path) -> None:
    path = tmp_path / "dict.tsv"
    path.write_text(
        "D1\tT\tHeart attack\nD1\tT\tHeart  attack\nD2\tT\t---\n"
        "D3\tT\tFever\nD3\tT\t(?)\nD4\tT\tX\n",
        encoding="utf-8",
    )
    skips = SkipReport()
    concepts = {c.id: c for c in read_tsv_dictionary(path, skips=skips)}
    assert concepts["D1"].names == ("Heart attack",)  # the same name twice: once
    assert "D2" not in concepts  # its only name has nothing to retrieve by
    assert concepts["D3"].names == ("Fever",)
    assert concepts["D4"].names == ("X",)  # one character is a name
    assert skips.counts == {"dictionary name without a letter or digit": 2}
    assert skips.first["dictionary name without a letter or digit"] == f"{path}:3"


def test_medic_ids_alternatives_and_skips(fixtures: Path) -> None:
    skips = SkipReport()
    concepts = {c.id: c for c in read_medic(fixtures / "medic.txt", skips=skips)}
    assert concepts["D006816"].alt_ids == ("OMIM:143100",)
    assert concepts["D006816"].names == ("Huntington Disease", "Huntington Chorea")
    assert concepts["D001943"].alt_ids == ("D001944",)
    assert skips.counts == {
        "MEDIC line without names": 1,
        "malformed MEDIC line (no 'IDS||NAMES')": 1,
    }


def test_read_dictionary_detects_the_format(fixtures: Path, tmp_path: Path) -> None:
    assert read_dictionary(fixtures / "medic.txt")[0].id == "D003920"
    assert read_dictionary(fixtures / "dict.tsv")[0].id == "C0010674"
    bad = tmp_path / "bad.txt"
    bad.write_text("\njust words\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        read_dictionary(bad)
    with pytest.raises(FileNotFoundError):
        read_dictionary(tmp_path / "missing.tsv")


def test_cadec_uses_spans_and_skips_unlabelled(fixtures: Path) -> None:
    skips = SkipReport()
    mentions = list(read_cadec(fixtures / "cadec.json", skips=skips))
    assert [m.surface for m in mentions] == [
        "knees hurt",
        "stomach upset",
        "No sleep",
        "headache",
    ]
    assert mentions[1].spans == ((27, 34), (46, 51))
    assert mentions[0].doc_id == "LIPITOR.1.ann"
    assert skips.counts == {
        "mention without a MedDRA label": 1,
        "mention spans missing or outside the post": 1,
        "post without 'raw' text": 1,
    }
    assert skips.repaired == {"discontiguous mention (spans joined)": 1}
    ids = [c.id for c in cadec_concepts(mentions)]
    assert ids == ["Arthralgia", "Dyspepsia", "Headache", "Insomnia"]


def test_cadec_bad_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "cadec.json"
    bad.write_text('[{"raw": ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"cadec\.json:1"):
        list(read_cadec(bad))


def test_jsonl_schema_spans_mention_and_splits(fixtures: Path) -> None:
    skips = SkipReport()
    pairs = list(read_jsonl_mentions(fixtures / "mentions.jsonl", skips=skips))
    assert [(m.surface, s) for m, s in pairs] == [
        ("chest pain", "train"),
        ("Monday", "train"),
        ("Fever", "dev"),
        ("rash", "test"),
    ]
    assert pairs[1][0].concept_ids == ("C0000009",)
    assert pairs[2][0].semantic_type == "T184"
    assert skips.counts == {
        "mention not found in its text": 1,
        "spans outside the text": 1,
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"text": "a b", "spans": [[0, 1]]}', "concept_id"),
        ('{"text": "a b", "concept_id": "C1"}', "'spans' or 'mention'"),
        (
            '{"text": "a b", "spans": [[0, 1]], "concept_id": "C1", "split": "x"}',
            "split",
        ),
    ],
)
def test_jsonl_malformed_line_names_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "ok", "spans": [[0, 2]], "concept_id": "C1"}\n' + line)
    with pytest.raises(ValueError, match=rf"m\.jsonl:2: .*{message}"):
        list(read_jsonl_mentions(path))


def test_psytar_workbook_quirks(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sentences = book.active
    sentences.title = "Sentence_Labeling"
    sentences.append(["id", "comment_id", "drug_id", "sentence_index", "sentences"])
    sentences.append([1, 1, "zoloft.1", 1, "Weight gain and Bad nausea for days."])
    sentences.append([2, 1, "zoloft.1", 2, "First week was a panic attack."])
    adr = book.create_sheet("ADR_Mapped")
    adr.append(["id", "drug_id", "sentence_index", "ADRs", "UMLS1"])
    adr.append([1, "zoloft.1", 1, "weight gain", "C0043094 / Weight gain / Finding"])
    adr.append([2, "zoloft.1", 1, "bad nausea", "c0027497 / nausea / sign or symptom"])
    adr.append([3, "zoloft.1", 1, "headache", "C0018681 / Headache / Finding"])
    adr.append([4, "zoloft.1", 1, "nausea", "nausea (no cui)"])
    adr.append([5, "zoloft.1", 9, "nausea", "C0027497 / Nausea / Finding"])
    adr.append([6, "zoloft.1", 1, None, None])
    wd = book.create_sheet("WD-Mapped ")  # the trailing space of the real workbook
    wd.append(["id", "drug_id", "sentence_id", "WDs", "UMLS1"])
    wd.append([1, "zoloft.1", 2, "first week, panic attack", "C0086769 / Panic / F"])
    path = tmp_path / "psytar.xlsx"
    book.save(path)
    skips = SkipReport()
    mentions, concepts = read_psytar(path, skips=skips)
    assert [(m.surface, m.concept_ids[0]) for m in mentions] == [
        ("Weight gain", "C0043094"),
        ("Bad nausea", "C0027497"),
        ("panic attack", "C0086769"),
    ]
    assert mentions[0].text == "Weight gain and Bad nausea for days."
    assert [c.id for c in concepts] == ["C0027497", "C0043094", "C0086769"]
    assert skips.counts == {
        "PsyTAR entity not found in its sentence": 1,
        "PsyTAR UMLS1 cell without a CUI": 1,
        "PsyTAR sentence not found": 1,
        "PsyTAR row without an entity": 1,
    }
    assert skips.repaired == {
        "PsyTAR entity located by its part after the last comma": 1
    }


# --- BOMs are BOMs, bad bytes and bad lines are named ----------------------

BOM = b"\xef\xbb\xbf"


def _with_bom(src: Path, dst: Path) -> Path:
    dst.write_bytes(BOM + src.read_bytes())
    return dst


def test_bom_dictionary_gives_the_plain_first_id(
    fixtures: Path, tmp_path: Path
) -> None:
    """A BOM TSV and a BOM MEDIC read like the files without it."""
    tsv = tmp_path / "d.tsv"
    tsv.write_bytes(BOM + b"C001\tT047\tFever\nC002\tT047\tCough\n")
    assert [c.id for c in read_dictionary(tsv)] == ["C001", "C002"]
    medic = _with_bom(fixtures / "medic.txt", tmp_path / "medic.txt")
    assert read_dictionary(medic) == read_dictionary(fixtures / "medic.txt")


def test_bom_pubtator_keeps_its_first_document(fixtures: Path, tmp_path: Path) -> None:
    """The first document's mentions survive a BOM, plain and gzip."""
    plain, _ = _pubtator(fixtures / "mini_pubtator.txt")
    bom = _with_bom(fixtures / "mini_pubtator.txt", tmp_path / "bom.txt")
    gz = tmp_path / "bom.txt.gz"
    gz.write_bytes(gzip.compress(bom.read_bytes()))
    for path in (bom, gz):
        mentions, skips = _pubtator(path)
        assert [m.surface for m in mentions] == [m.surface for m in plain]
        assert "annotation outside its document" not in " ".join(skips.counts)


def test_bom_jsonl_and_cadec_read_like_plain(fixtures: Path, tmp_path: Path) -> None:
    """JSONL and CADEC JSON with a BOM parse to the same mentions."""
    jsonl = _with_bom(fixtures / "mentions.jsonl", tmp_path / "m.jsonl")
    assert [(m.surface, m.spans, s) for m, s in read_jsonl_mentions(jsonl)] == [
        (m.surface, m.spans, s)
        for m, s in read_jsonl_mentions(fixtures / "mentions.jsonl")
    ]
    cadec = _with_bom(fixtures / "cadec.json", tmp_path / "cadec.json")
    assert [m.surface for m in read_cadec(cadec)] == [
        m.surface for m in read_cadec(fixtures / "cadec.json")
    ]


LATIN1 = "Fi\xe8vre".encode("latin-1")


@pytest.mark.parametrize(
    ("name", "content", "read"),
    [
        ("d.tsv", b"C001\tT047\tFever\nC002\tT047\t" + LATIN1 + b"\n", read_dictionary),
        ("medic.txt", b"D001||Fever\nD002||" + LATIN1 + b"\n", read_dictionary),
        ("p.txt", b"1|t|Fever.\n1|a|" + LATIN1 + b"\n", read_pubtator),
        (
            "m.jsonl",
            b'{"text": "ok", "mention": "ok", "concept_id": "C1"}\n{"text": "'
            + LATIN1
            + b'"}\n',
            read_jsonl_mentions,
        ),
        ("cadec.json", b'[{"raw": "a"},\n {"raw": "' + LATIN1 + b'"}]', read_cadec),
    ],
)
def test_latin1_input_names_file_and_line(
    tmp_path: Path, name: str, content: bytes, read: object
) -> None:
    """Bytes that are not UTF-8: one ValueError with file, line 2 and byte offset."""
    path = tmp_path / name
    path.write_bytes(content)
    offset = content.index(b"\xe8")
    with pytest.raises(ValueError, match=rf"{name}:2: not UTF-8 .*offset {offset}\b"):
        list(read(path))  # type: ignore[operator]


def test_binary_gzip_that_is_not_gzip_is_named(tmp_path: Path) -> None:
    """A .gz that does not decompress: ValueError naming the file."""
    path = tmp_path / "c.txt.gz"
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match=r"c\.txt\.gz: not a readable gzip"):
        list(read_pubtator(path))


def test_dictionary_line_without_name_column_is_refused(tmp_path: Path) -> None:
    """`id<TAB>type` in an `id<TAB>type<TAB>name` file: refused, not type-as-name."""
    path = tmp_path / "d.tsv"
    path.write_text("C001\tT047\tFever\n\nC002\tT047\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.tsv:3: 2 columns .* name column"):
        read_dictionary(path)


def test_jsonl_repeated_concept_id_is_refused(tmp_path: Path) -> None:
    """The same gold twice is refused with file:line (not skipped as composite)."""
    path = tmp_path / "m.jsonl"
    line = '{"text": "a b", "spans": [[0, 1]], "concept_ids": ["C1", "UMLS:C1"]}'
    path.write_text('{"text": "ok", "spans": [[0, 2]], "concept_id": "C1"}\n' + line)
    with pytest.raises(ValueError, match=r"m\.jsonl:2: concept id 'C1' is given twice"):
        list(read_jsonl_mentions(path))


@pytest.mark.parametrize(
    "fields",
    [
        '"spans": [["0", "1"]]',
        '"spans": [[0.5, 1]]',
        '"mention": null',
        '"mention": " "',
    ],
)
def test_jsonl_spans_and_mention_must_have_their_types(
    tmp_path: Path, fields: str
) -> None:
    """String or float offsets and a null or blank mention: refused with file:line."""
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "a b", "concept_id": "C1", ' + fields + "}\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:1: '(spans|mention)'"):
        list(read_jsonl_mentions(path))


def test_psytar_binary_that_is_not_a_workbook_is_named(tmp_path: Path) -> None:
    """Bytes that are not an .xlsx: a ValueError naming the file."""
    pytest.importorskip("openpyxl")
    path = tmp_path / "psytar.xlsx"
    path.write_bytes(b"\x00\xff" * 50)
    with pytest.raises(ValueError, match=r"psytar\.xlsx: not a readable \.xlsx"):
        read_psytar(path)


SWAPPED = "Diabetes Mellitus\tD003920\ndiabetes\tD003920\nAsthma\tD001249\n"


@pytest.mark.parametrize(
    ("text", "first_line"),
    [
        (SWAPPED, 1),
        ("# name, type, id\n" + SWAPPED.replace("\tD", "\tT047\tMESH:D"), 2),
        ("fever\t12345\nchest pain\tHP:0100749\n", 1),
    ],
)
def test_dictionary_with_names_first_is_refused_with_a_hint(
    tmp_path: Path, text: str, first_line: int
) -> None:
    """`name<TAB>id`: one line naming the file, its first line and the fix."""
    path = tmp_path / "d.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=rf"d\.tsv:{first_line}: the first column looks like names and the last "
        r"like concept ids .*swap the columns",
    ):
        read_dictionary(path)


@pytest.mark.parametrize(
    "text",
    [
        "D003920\tDiabetes Mellitus\nD003920\tdiabetes\nD001249\tAsthma\n",
        "C0011849\tT047\tDiabetes Mellitus\nC0015967\tT184\tFever\n",
        "asthma\tAsthma\nflu\tInfluenza\n",  # ids without digits: not names
        "D000086382\tCOVID-19\nD003920\tType2DM\nD001249\tIL6\n",  # names like ids
    ],
)
def test_dictionary_with_ids_first_reads_without_a_hint(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "d.tsv"
    path.write_text(text, encoding="utf-8")
    assert read_dictionary(path)


def test_a_few_swapped_looking_lines_do_not_refuse_a_dictionary(tmp_path: Path) -> None:
    """Under 90% of the sampled lines looking swapped: read as written."""
    ids_first = [f"D{i:06d}\tcondition {i}" for i in range(9)]
    path = tmp_path / "d.tsv"
    path.write_text("\n".join(["COVID 19\tD000086382", *ids_first]), encoding="utf-8")
    assert len(read_dictionary(path)) == 10


COMPOSITE = [
    '{"text": "a b", "spans": [[0, 1]], "concept_id": "C1"}',
    '{"text": "a b", "spans": [[0, 1]], "concept_ids": ["C1", "C2"]}',
    '{"text": "a b", "spans": [[2, 3]], "concept_id": "C3"}',
    '{"text": "a b", "spans": [[2, 3]], "concept_id": "MESH:C1|C4"}',
    '{"text": "a b", "spans": [[2, 3]], "concept_id": "C5+C6"}',
]


def test_jsonl_composite_mentions_are_refused_with_count_and_first_line(
    tmp_path: Path,
) -> None:
    """Several ids (a list, `|` or `+`): refused once read, naming how many and where."""
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(COMPOSITE) + "\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"m\.jsonl:2: 3 mentions with several concept ids"
    ):
        list(read_jsonl_mentions(path))


def test_jsonl_composite_mentions_skipped_on_request_are_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(COMPOSITE) + "\n", encoding="utf-8")
    skips = SkipReport()
    pairs = list(read_jsonl_mentions(path, skips=skips, composite="skip"))
    assert [m.concept_ids for m, _ in pairs] == [("C1",), ("C3",)]
    assert skips.counts == {"composite mention (several concept ids)": 3}
    assert skips.first["composite mention (several concept ids)"] == f"{path}:2"


def test_jsonl_unknown_composite_policy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(COMPOSITE[0], encoding="utf-8")
    with pytest.raises(ValueError, match="composite must be one of"):
        list(read_jsonl_mentions(path, composite="keep"))
