"""Readers and PUBLIC-3 on the real corpora in ../shared/data, as the READMEs say."""

from pathlib import Path

import pytest

from kfacel.data.readers import read_cadec, read_dictionary, read_psytar, read_pubtator
from kfacel.data.records import SkipReport

pytestmark = pytest.mark.data


def test_ncbi_and_medic_match_their_readme(shared_data: Path) -> None:
    ncbi = shared_data / "ncbi_disease"
    skips = SkipReport()
    counts = [
        len(list(read_pubtator(ncbi / f, skips=skips)))
        for f in ("NCBItrainset_corpus.txt", "NCBIdevelopset_corpus.txt")
    ]
    assert counts == [5145, 787]
    assert skips.counts == {}
    medic = read_dictionary(ncbi / "medic_06Jul2012.txt")
    ids = {i for c in medic for i in (c.id, *c.alt_ids)}
    test = list(read_pubtator(ncbi / "NCBItestset_corpus.txt"))
    assert all(i in ids for m in test for i in m.concept_ids)


def test_cadec_matches_its_readme(shared_data: Path) -> None:
    skips = SkipReport()
    mentions = list(read_cadec(shared_data / "cadec" / "CADEC.json", skips=skips))
    assert len(mentions) == 5985
    assert skips.counts == {"mention without a MedDRA label": 332}
    assert len({m.concept_ids[0] for m in mentions}) == 442


def test_medmentions_names_have_types(shared_data: Path) -> None:
    concepts = read_dictionary(shared_data / "medmentions" / "st21pv_entities.txt")
    assert len(concepts) == 25419
    assert all(c.semantic_type and c.semantic_type.startswith("T") for c in concepts)


def test_psytar_mapped_rows_are_all_accounted_for(shared_data: Path) -> None:
    pytest.importorskip("openpyxl")
    skips = SkipReport()
    mentions, concepts = read_psytar(
        shared_data / "psytar" / "PsyTAR_dataset.xlsx", skips=skips
    )
    empty = skips.counts.pop("PsyTAR row without an entity")
    assert empty > 0
    assert len(mentions) + skips.total == 7414  # the README's mention count
    assert {m.concept_ids[0] for m in mentions} <= {c.id for c in concepts}
