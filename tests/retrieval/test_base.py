"""The retrieval interface: a channel's search, and ties broken by dictionary order."""

import numpy as np
import pytest

from kfacel.retrieval.base import top_k
from kfacel.retrieval.methods import build_generator
from tests.retrieval._dictionaries import SYMPTOMS as CONCEPTS


@pytest.mark.parametrize("method", ["tfidf", "bm25"])
def test_search_finds_exact_and_synonym_names(method: str) -> None:
    gen = build_generator(method, CONCEPTS)
    results = gen.search(["Chest  Pain", "pyrexia", "headache"], k=3)
    assert [r[0][0].id for r in results] == ["C1", "C3", "C2"]
    assert all(0 < len(r) <= 3 for r in results)
    assert all(score > 0 for r in results for _, score in r)
    scores = [s for _, s in results[0]]
    assert scores == sorted(scores, reverse=True)
    # "pyrexia" matched C3 through its synonym; "headache" through its preferred name
    assert (results[1][0][0].name, results[1][0][0].synonym) == ("fever", "pyrexia")
    assert results[2][0][0].synonym is None


@pytest.mark.parametrize("method", ["tfidf", "bm25"])
def test_a_mention_sharing_nothing_with_the_dictionary_has_no_candidate(
    method: str,
) -> None:
    """A CJK mention shares no 3-gram or word: no candidate, not k arbitrary ones."""
    gen = build_generator(method, CONCEPTS)
    none, some = gen.search(["心肌梗死", "pyrexia"], k=5)
    assert none == []
    assert some[0][0].id == "C3"
    assert all(score > 0 for _, score in some)


def test_top_k_breaks_ties_by_dictionary_order() -> None:
    scores = np.array([[0.0, 0.3, 0.3, 0.3, 0.1]])
    assert top_k(scores, 2).tolist() == [[1, 2]]
    assert top_k(scores, 9).tolist() == [[1, 2, 3, 4, 0]]
