"""Ontology files round-trip and are checked; a union keeps clashing ids apart."""

import gzip
from pathlib import Path

import pytest

from kfacel.data.records import Concept
from kfacel.retrieval.base import dictionary_digest
from kfacel.retrieval.ontology import (
    Ontology,
    learn,
    ontology_bytes,
    read_ontology,
    union,
    write_ontology,
)
from kfacel.retrieval.tfidf import TfidfGenerator

CONCEPTS = [
    Concept("D001", ("heart attack", "myocardial infarction"), "Disease", ("C01",)),
    Concept("D002", ("lung cancer",), None),
    Concept("D003", ("fièvre",), "Disease"),
]


def test_an_ontology_file_round_trips_deterministically(tmp_path: Path) -> None:
    file = tmp_path / "o.jsonl.gz"
    write_ontology(file, CONCEPTS)
    assert read_ontology(file) == CONCEPTS
    assert file.read_bytes() == ontology_bytes(list(CONCEPTS))  # no time stamp
    assert read_ontology(file, sha256=dictionary_digest(CONCEPTS)) == CONCEPTS


def test_a_damaged_or_foreign_file_is_refused_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "o.jsonl.gz"
    text = gzip.decompress(ontology_bytes(CONCEPTS)).decode()
    file.write_bytes(gzip.compress(text.replace("lung cancer", "lung cancre").encode()))
    with pytest.raises(ValueError, match=r"o\.jsonl\.gz: its concepts hash to"):
        read_ontology(file)
    file.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"o\.jsonl\.gz: not a kfacel-ontology/1"):
        read_ontology(file)
    write_ontology(file, CONCEPTS)
    with pytest.raises(ValueError, match="not the recorded 000000000000"):
        read_ontology(file, sha256="0" * 64)


def test_union_keeps_ids_and_namespaces_only_a_clash() -> None:
    other = [Concept("C01", ("dizziness",)), Concept("D001", ("nausea",))]
    u = union([("medic", CONCEPTS), ("meddra", other)])
    assert [c.id for c in u.concepts] == ["D001", "D002", "D003", "meddra:C01",
                                          "meddra:D001"]  # fmt: skip
    assert u.source("meddra:D001") == ("meddra", "D001")
    assert u.source("D001") == ("medic", "D001")
    TfidfGenerator(u.concepts)  # every id and alternative id distinct


def test_learn_merges_an_equal_dictionary_and_renames_a_clashing_name() -> None:
    a = Ontology("medic", "a" * 64, 3, ("ncbi",))
    again = learn([a], Ontology("medic", "a" * 64, 3, ("bc5cdr",)))
    assert again == (Ontology("medic", "a" * 64, 3, ("ncbi", "bc5cdr")),)
    other = learn(again, Ontology("medic", "b" * 64, 5, ("cdr",)))
    assert [o.name for o in other] == ["medic", "medic-cdr"]
    # a stored copy replaces a digest-only record of the same dictionary
    stored = Ontology("x", "a" * 64, 3, ("t",), loaded=tuple(CONCEPTS))
    assert learn([a], stored)[0].stored


def test_a_digest_only_ontology_says_what_to_give() -> None:
    with pytest.raises(ValueError, match="give its dictionary file"):
        Ontology("medic", "a" * 64, 3).concepts()
