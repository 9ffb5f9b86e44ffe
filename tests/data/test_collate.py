"""Collator: shapes, padding candidates, gold labels, features and type ids."""

import dataclasses
import inspect

import pytest

from kfacel.data import collate
from kfacel.data.collate import (
    FEATURE_NAMES,
    Collator,
    build_type_vocab,
    make_batches,
    similarity_features,
)
from kfacel.data.records import Candidate, LinkingExample
from kfacel.data.tokenize import WordPieceTokenizer
from kfacel.types import Batch


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
    tok = WordPieceTokenizer()
    for i, e in enumerate(examples):  # each cell against its candidate, by hand
        for j, c in enumerate(e.candidates):
            assert b.features[i, j].tolist() == pytest.approx(
                similarity_features(e.mention, c.text)
            )
            want = tok.encode_names([c.text], max_length=16)[0]
            padding = [tok.pad_id] * (b.candidate_ids.shape[2] - len(want))
            assert b.candidate_ids[i, j].tolist() == want + padding
    assert b.features[1, 2].abs().sum() == 0  # the padding candidate: no features
    assert (b.candidate_ids[1, 2] == tok.pad_id).all()


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


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer()


def test_collators_with_equal_settings_are_equal_whatever_they_have_cached(tok):
    used, fresh = Collator(tok), Collator(tok)
    used([ex("fever", ["fever", "pain"], 0)])
    assert used == fresh
    assert "cache" not in repr(used)


def test_the_name_cache_is_bounded_and_keeps_the_recent_names(tok, monkeypatch):
    monkeypatch.setattr(collate, "NAME_CACHE_SIZE", 4)
    collator = Collator(tok)
    names = [f"name{i}" for i in range(10)]
    for i in range(0, 10, 2):
        batch = collator([ex("x", names[i : i + 2], 0)])
        want = tok.encode_names(names[i : i + 2], max_length=16)
        for j, ids in enumerate(want):
            assert batch.candidate_ids[0, j, : len(ids)].tolist() == ids
    assert len(collator._name_cache) == 4
    assert list(collator._name_cache) == names[-4:]  # least recently used dropped first


def test_a_batch_with_more_names_than_the_cache_holds_is_still_right(tok, monkeypatch):
    monkeypatch.setattr(collate, "NAME_CACHE_SIZE", 2)
    names = ["heart", "lung", "liver", "kidney", "brain"]
    batch = Collator(tok)([ex("heart", names, 0)])
    for j, ids in enumerate(tok.encode_names(names, max_length=16)):
        assert batch.candidate_ids[0, j, : len(ids)].tolist() == ids


def test_type_ids_are_a_declared_field_derived_from_types(tok):
    declared = {f.name: f for f in dataclasses.fields(Collator)}
    assert not declared["_type_ids"].init
    assert not declared["_type_ids"].compare
    assert Collator(tok, types=("A", "B"))._type_ids == {"A": 1, "B": 2}


def test_the_batch_docs_state_the_unknown_type_id_the_collator_writes(tok):
    b = Collator(tok, types=("T1",))([ex("x", ["x", "y"], 0, ["T1", "T9"])])
    unknown = int(b.candidate_types[0, 1])
    assert unknown == 0
    doc = " ".join((inspect.getdoc(Batch) or "").split())
    assert f"({unknown} unknown" in doc
    module_doc = " ".join((collate.__doc__ or "").split())
    assert f"{unknown} stands for a type that is unknown" in module_doc


def test_sampled_candidates_keep_the_gold_and_k_minus_1_valid_others(tok):
    import torch

    from kfacel.data.collate import sample_candidates

    names = ["heart attack", "lung", "liver", "kidney", "brain", "skin"]
    examples = [
        ex("heart attack", names, g, [f"T{i}" for i in range(6)]) for g in range(6)
    ]
    examples.append(ex("fever", ["fever", "pain"], 1))  # fewer valid than k
    full = Collator(tok, types=build_type_vocab(examples))(examples)
    gen = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(20):
        b = sample_candidates(full, 3, gen)
        assert b.candidate_ids.shape[:2] == (7, 3)
        for i in range(7):
            cols = [  # which full column each kept column came from, by name ids
                next(
                    c
                    for c in range(6)
                    if torch.equal(full.candidate_ids[i, c], b.candidate_ids[i, j])
                    and bool(full.candidate_valid[i, c])
                    == bool(b.candidate_valid[i, j])
                )
                for j in range(3)
            ]
            assert cols[int(b.labels[i])] == int(full.labels[i])  # the gold, labelled
            assert cols == sorted(cols)  # original order kept
            for j, c in enumerate(cols):  # features and types travel with the name
                assert torch.equal(b.features[i, j], full.features[i, c])
                assert b.candidate_types[i, j] == full.candidate_types[i, c]
            if i < 6:
                seen.add(tuple(cols))
        assert b.candidate_valid[6].tolist() == [
            True,
            True,
            False,
        ]  # both, then padding
    assert len(seen) > 6  # the others are drawn anew each call
    again = sample_candidates(full, 3, torch.Generator().manual_seed(3))
    first = sample_candidates(full, 3, torch.Generator().manual_seed(3))
    assert torch.equal(again.candidate_ids, first.candidate_ids)  # seeded
    assert sample_candidates(full, 6, gen) is full  # k ≥ C: nothing to drop
