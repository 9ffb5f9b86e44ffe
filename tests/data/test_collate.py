"""Collator: shapes, padding candidates, gold labels, features and type ids."""

import pytest

from kfacel.data.collate import (
    FEATURE_NAMES,
    Collator,
    build_type_vocab,
    make_batches,
    similarity_features,
)
from kfacel.data.records import Candidate, LinkingExample
from kfacel.data.tokenize import WordPieceTokenizer


def ex(mention, names, gold, types=None):
    types = types or [None] * len(names)
    cands = tuple(
        Candidate(f"C{i}", n, t)
        for i, (n, t) in enumerate(zip(names, types, strict=True))
    )
    return LinkingExample(mention, "left words", "right", cands, f"C{gold}")


def test_batch_shapes_padding_labels_and_types():
    examples = [
        ex("heart attack", ["heart attack", "lung", "liver"], 0, ["T1", "T2", None]),
        ex("fever", ["fever", "pain"], 1, ["T2", "T3"]),
    ]
    types = build_type_vocab(examples)
    assert types == ("T1", "T2", "T3")
    b = Collator(WordPieceTokenizer(), types=types)(examples)
    assert b.candidate_ids.shape[:2] == (2, 3)
    assert b.candidate_valid.tolist() == [[True, True, True], [True, True, False]]
    assert b.labels.tolist() == [0, 1]
    assert b.features.shape == (2, 3, len(FEATURE_NAMES))
    assert b.candidate_types.tolist() == [[1, 2, 0], [2, 3, 0]]
    assert b.mention_mask.sum(1).tolist() == [
        int((b.mention_ids[i] != 0).sum()) for i in range(2)
    ]
    assert b.candidate_mask[..., 0].all()  # no all-padding row


def test_similarity_features_by_hand():
    f = dict(
        zip(
            FEATURE_NAMES,
            similarity_features("Heart  Attack", "heart attack"),
            strict=True,
        )
    )
    assert f["exact"] == f["trigram_jaccard"] == f["token_jaccard"] == 1.0
    g = dict(
        zip(FEATURE_NAMES, similarity_features("heart", "heart attack"), strict=True)
    )
    assert g["exact"] == 0.0
    assert g["mention_covered"] == 1.0
    assert g["name_covered"] == 0.5
    assert g["prefix"] == pytest.approx(5 / 12)
    assert similarity_features("", "x")[0] == 0.0


def test_make_batches_sizes():
    examples = [ex("a", ["a", "b"], 0) for _ in range(5)]
    sizes = [
        len(b)
        for b in make_batches(examples, Collator(WordPieceTokenizer()), batch_size=2)
    ]
    assert sizes == [2, 2, 1]


def test_the_collator_reads_a_candidates_synonym_not_its_preferred_name():
    tok = WordPieceTokenizer()
    plain = Candidate("C0", "Cirrhosis, Familial")
    with_synonym = Candidate("C0", "Cirrhosis, Familial", synonym="copper toxicosis")
    other = Candidate("C1", "silicosis")
    batches = [
        Collator(tok)([LinkingExample("copper toxicosis", "", "", (c, other), "C0")])
        for c in (plain, with_synonym)
    ]
    exact = FEATURE_NAMES.index("exact")
    assert batches[0].features[0, 0, exact] == 0.0
    assert batches[1].features[0, 0, exact] == 1.0
    want = tok.encode_names(["copper toxicosis"], max_length=16)[0]
    assert batches[1].candidate_ids[0, 0, : len(want)].tolist() == want
