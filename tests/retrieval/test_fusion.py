"""Reciprocal rank fusion (eq. R1): alias links first, then the fused channels."""

import numpy as np
import pytest

from kfacel.data.aliases import AliasTable
from kfacel.data.records import Concept
from kfacel.retrieval.alias import AliasGenerator
from kfacel.retrieval.base import CandidateGenerator
from kfacel.retrieval.fusion import RRF_K, FusedGenerator
from kfacel.retrieval.methods import build_generator
from tests.retrieval._dictionaries import SYNONYMS as CONCEPTS


class Fixed(CandidateGenerator):
    """A channel whose concept scores are given: row ``k`` for the ``k``-th letter."""

    def __init__(self, concepts, scores, method):
        super().__init__(concepts)
        self.table = np.asarray(scores, dtype=np.float32)
        self.method = method

    def _concept_scores(self, keys, docs):
        rows = self.table[[ord(k) - ord("a") for k in keys]]
        return rows, np.zeros((len(keys), len(self._names)), np.float32)


def test_fusion_puts_alias_links_first_then_follows_reciprocal_ranks() -> None:
    a = Fixed(CONCEPTS, [[0.9, 0.8, 0.0, 0.1, 0.2]], "a")  # ranks C1 C2 C5 C4
    b = Fixed(CONCEPTS, [[0.1, 0.7, 0.0, 0.9, 0.0]], "b")  # ranks C4 C2 C1
    fused = FusedGenerator(CONCEPTS, [a, b])
    ((scores,),) = fused.concept_scores(["a"])
    rr = [1 / (RRF_K + r) for r in (1, 2, 3, 4)]
    expected = [rr[0] + rr[2], rr[1] + rr[1], 0.0, rr[3] + rr[0], rr[2]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # the alias table's links come first, most linked first, whatever the fusion says
    table = AliasTable((("d", "a", "C3"), ("d", "a", "C3"), ("d", "a", "C5")))
    with_alias = FusedGenerator(CONCEPTS, [a, b], AliasGenerator(CONCEPTS, table))
    (top,) = with_alias.search(["a"], 5)
    assert [c.id for c, _ in top] == ["C3", "C5", "C1", "C2", "C4"]
    assert top[0][1] == pytest.approx(1 + 2 / 4)  # 1 + n(m, c) / (n(m) + 1)


def test_fused_search_is_deterministic_and_handles_odd_strings(dense) -> None:
    fused = FusedGenerator(
        [*CONCEPTS, Concept("C6", ("!!!",))],
        [build_generator("tfidf", [*CONCEPTS, Concept("C6", ("!!!",))]), dense_of()],
    )
    for mention in ["x", "heart attack"]:
        first = fused.search([mention], 3)
        assert first == fused.search([mention], 3)
        assert len(first[0]) == 3
    assert fused.search(["?"], 3) == [[]]  # no letter or digit of the dictionary's


def dense_of():
    return build_generator("dense", [*CONCEPTS, Concept("C6", ("!!!",))])
