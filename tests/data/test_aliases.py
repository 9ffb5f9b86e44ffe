"""Alias table: counts by hand, own document left out; JSON round trip; features."""

import pytest

from kfacel.data.aliases import AliasTable, mention_key
from kfacel.data.collate import (
    ALIAS_FEATURE_NAMES,
    FEATURE_NAMES,
    Collator,
    alias_features,
)
from kfacel.data.records import Candidate, LinkingExample
from kfacel.data.tokenize import WordPieceTokenizer

CANDS = (Candidate("C1", "myocardial infarction"), Candidate("C2", "mitral valve"))


def q(mention: str, gold: str, doc: str, left: str = "") -> LinkingExample:
    return LinkingExample(mention, left, "", CANDS, gold, doc)


TRAIN = [
    q("MI", "C1", "d1"),
    q("M.I.", "C1", "d1"),
    q("mi", "C1", "d2"),
    q("mi", "C2", "d2"),
    q("valve", "C2", "d3"),
]


def test_counts_by_hand_leave_the_own_document_out():
    table = AliasTable.from_examples(TRAIN)
    assert mention_key("M.I.") == "m i"
    # d1's query sees d2 and d3 only: "mi" once to C1, once to C2
    own = table.counts(q("mi", "C1", "d1"), "C1")
    assert (own.pair, own.mention, own.concept) == (1, 2, 1)
    # a document outside training sees everything
    new = table.counts(q("MI", "C1", "d9"), "C1")
    assert (new.pair, new.mention, new.concept) == (2, 3, 3)
    assert table.counts(q("valve", "C2", "d3"), "C2").pair == 0
    assert table.counts(q("valve", "C2", "d3"), "C2").concept == 1


def test_a_query_without_document_leaves_only_itself_out():
    a, b = q("fever", "C1", "", left="x"), q("fever", "C1", "", left="y")
    table = AliasTable.from_examples([a, b])
    assert table.counts(a, "C1").pair == 1
    assert table.counts(q("fever", "C1", "", left="z"), "C1").pair == 2


def test_json_round_trip_and_format_check():
    table = AliasTable.from_examples(TRAIN)
    assert AliasTable.from_json(table.to_json()) == table
    with pytest.raises(ValueError, match="not an alias table"):
        AliasTable.from_json({"format": "other", "links": []})


def test_collator_appends_alias_features():
    table = AliasTable.from_examples(TRAIN)
    query = q("mi", "C1", "d9")
    b = Collator(WordPieceTokenizer(), aliases=table)([query])
    names = FEATURE_NAMES + ALIAS_FEATURE_NAMES
    assert b.features.shape == (1, 2, len(names))
    f = dict(
        zip(
            ALIAS_FEATURE_NAMES,
            b.features[0, 0, len(FEATURE_NAMES) :].tolist(),
            strict=True,
        )
    )
    assert f["alias_share"] == pytest.approx(2 / 3)
    assert f["alias_seen"] == 1.0
    assert f["alias_count"] == pytest.approx(alias_features(table, query, "C1")[2])
    unseen = alias_features(table, q("cough", "C1", "d9"), "C2")
    assert unseen[:3] == (0.0, 0.0, 0.0)
    assert unseen[3] > 0  # C2 was a gold twice
