"""Candidate lists: the gold and the best others, shuffled, and the channel's stats."""

import pytest

from kfacel.data.records import Concept
from kfacel.retrieval.candidates import make_candidates
from kfacel.retrieval.methods import build_generator
from tests.retrieval._dictionaries import SYMPTOMS as CONCEPTS


def test_a_candidate_reads_its_name_closest_to_the_mention() -> None:
    concepts = [
        Concept("D1", ("Cirrhosis, Familial", "Copper toxicosis", "COPPER TOXICOSIS")),
        Concept("D2", ("Thyrotoxicosis", "Thyroid storm")),
        Concept("D3", ("Silicosis",)),
    ]
    gen = build_generator("tfidf", concepts)
    mentions, golds = ["copper toxicosis", "silicosis", "qqq"], ["D1", "D3", "D2"]
    lists, _, _ = make_candidates(gen, mentions, golds, num_candidates=3, seed=0)
    first = {c.id: c for c in lists[0]}
    # the dictionary's own spelling of the first of the equal names
    assert first["D1"].synonym == "Copper toxicosis"
    assert first["D1"].text == "Copper toxicosis"
    assert first["D1"].name == "Cirrhosis, Familial"
    # "toxicosis" is closer to "Thyrotoxicosis" (preferred) than to "Thyroid storm"
    assert first["D2"].synonym is None
    assert first["D2"].text == "Thyrotoxicosis"
    # no name shares a 3-gram with "qqq": no synonym is made up
    assert all(c.synonym is None for c in lists[2])
    plain, _, _ = make_candidates(
        gen, mentions, golds, num_candidates=3, seed=0, synonyms=False
    )
    assert [[c.id for c in cs] for cs in plain] == [[c.id for c in cs] for cs in lists]
    assert all(c.synonym is None for cs in plain for c in cs)


@pytest.mark.parametrize("method", ["tfidf", "bm25"])
def test_make_candidates_properties(method: str) -> None:
    gen = build_generator(method, CONCEPTS)
    mentions = ["chest pain", "back ache", "zzz", "pain in the abdomen", "febrile"]
    golds = ["C1", "ALT6", "C7", "C4", "C3"]
    lists, found, stats = make_candidates(
        gen, mentions, golds, num_candidates=4, seed=3
    )
    again, _, _ = make_candidates(gen, mentions, golds, num_candidates=4, seed=3)
    assert lists == again  # deterministic
    for cands, gold in zip(lists, ["C1", "C6", "C7", "C4", "C3"], strict=True):
        ids = [c.id for c in cands]
        assert len(ids) == 4
        assert len(set(ids)) == 4
        assert gold in ids  # alternative id resolved to the primary one
    assert stats.queries == 5
    assert stats.recall[1] <= stats.recall[4] <= 1
    assert 0 <= stats.accuracy <= stats.recall[1]
    # retrieved = the gold in the generator's own top C: the recall@C hits
    assert sum(found) == round(stats.recall[4] * 5)
    assert found[2] is False  # "zzz" shares no 3-gram with any name: C7 was inserted


def test_candidate_order_is_shuffled_by_the_seed() -> None:
    gen = build_generator("tfidf", CONCEPTS)
    mentions, golds = ["chest pain"] * 40, ["C1"] * 40
    lists, _, _ = make_candidates(gen, mentions, golds, num_candidates=5, seed=0)
    positions = {[c.id for c in cands].index("C1") for cands in lists}
    assert len(positions) > 1
    other, _, _ = make_candidates(gen, mentions, golds, num_candidates=5, seed=1)
    assert other != lists


def test_generator_stats_count_ties_as_wrong() -> None:
    twins = [Concept("A", ("same name",)), Concept("B", ("same name",))]
    gen = build_generator("tfidf", [*twins, *CONCEPTS])
    _, found, stats = make_candidates(
        gen, ["same name"], ["B"], num_candidates=3, seed=0
    )
    assert found == [True]  # retrieved (top 3), yet not ranked first
    assert stats.accuracy == 0.0  # A ties with the gold B
    assert (stats.recall[1], stats.recall[3]) == (0.0, 1.0)


def test_num_candidates_is_capped_by_the_dictionary() -> None:
    gen = build_generator("bm25", CONCEPTS[:3])
    lists, _, stats = make_candidates(gen, ["fever"], ["C3"], num_candidates=10, seed=0)
    assert len(lists[0]) == 3
    assert stats.recall == {1: 1.0, 3: 1.0}


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown candidate method"):
        build_generator("sparse", CONCEPTS)
    with pytest.raises(ValueError, match="empty"):
        build_generator("tfidf", [])
    with pytest.raises(ValueError, match="appears twice"):
        build_generator("tfidf", [CONCEPTS[0], CONCEPTS[0]])
    gen = build_generator("tfidf", CONCEPTS)
    with pytest.raises(ValueError, match="'C99' is not in the dictionary"):
        make_candidates(gen, ["x"], ["C99"], num_candidates=3, seed=0)


@pytest.mark.parametrize("method", ["tfidf", "bm25"])
def test_one_concept_dictionary_is_a_clear_error(method: str) -> None:
    """One concept gives no negative: named, not numpy's `zero-size array`."""
    gen = build_generator(method, CONCEPTS[:1])
    with pytest.raises(ValueError, match="1 usable concept; a query needs at least 2"):
        make_candidates(gen, ["chest pain"], ["C1"], num_candidates=3, seed=0)
