"""Channels over millions of names, against the exact search they stand in for.

Impact-ordered TF-IDF postings, the dense channel's HNSW rankings and their fusion are
forced on small dictionaries (``exact_below=1``): with nothing cut they must give the
exact search's answer to the bit, and with postings cut, exact scores of what they find.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from kfacel.data.aliases import AliasTable
from kfacel.demo import demo_tasks
from kfacel.retrieval import tfidf
from kfacel.retrieval.alias import AliasGenerator
from kfacel.retrieval.ann import IndexKind, IndexSettings
from kfacel.retrieval.base import CandidateGenerator, top_k
from kfacel.retrieval.dense import DenseGenerator
from kfacel.retrieval.fusion import FusedGenerator
from kfacel.retrieval.ontology import read_ontology
from kfacel.retrieval.tfidf import ImpactLayers, TfidfGenerator
from tests.retrieval._dictionaries import SYNONYMS, HashEncoder

EXACT = IndexSettings(kind=IndexKind.EXACT)
LARGE = IndexSettings(exact_below=1)
"""Every dictionary counts as millions of names."""


@pytest.fixture(scope="module")
def demo():
    """mm-demo's dictionary (8.6k concepts, 17k names) and 200 of its test mentions."""
    task = demo_tasks()[0]
    return read_ontology(task.dictionary), [q.mention for q in task.test][:200]


def test_impact_ordered_postings_with_nothing_cut_are_the_exact_search(demo) -> None:
    concepts, mentions = demo
    exact = TfidfGenerator(concepts, settings=EXACT)
    uncut = TfidfGenerator(
        concepts, settings=LARGE, postings=10**9, rescored=10**9, budget=10**12
    )
    assert uncut.approximate
    assert not exact.approximate
    assert uncut.search(mentions, 20) == exact.search(mentions, 20)  # scores to the bit


@pytest.mark.parametrize(
    ("postings", "rescored", "budget"),
    [(20, 50, 10**12), (10**9, 50, 300)],  # names cut per 3-gram; postings read
)
def test_cut_postings_find_fewer_names_but_score_them_exactly(
    demo, postings, rescored, budget
) -> None:
    """Each concept found scores the exact score of one of its names, at most its own."""
    concepts, mentions = demo
    exact = TfidfGenerator(concepts, settings=EXACT)
    cut = TfidfGenerator(
        concepts, settings=LARGE, postings=postings, rescored=rescored, budget=budget
    )
    found = cut.search(mentions, 10)
    assert found != exact.search(mentions, 10)  # the cut changes some answers
    rows = [
        (scores[r], by_name[r])
        for scores, by_name, batch in exact._batches(mentions)
        for r in batch
    ]
    for (scores, by_name), got in zip(rows, found, strict=True):
        values = [s for _, s in got]
        assert values == sorted(values, reverse=True)
        for candidate, value in got:
            j = exact.index_of(candidate.id)
            own = by_name[exact._starts[j] : exact._starts[j + 1]]
            assert value in own.tolist()
            assert value <= scores[j]


def test_task_building_reads_the_same_ranking_as_search(demo) -> None:
    """``make_candidates`` reads score matrices; an approximate channel's hold its ranking."""
    concepts, mentions = demo
    cut = TfidfGenerator(concepts, settings=LARGE, postings=20, rescored=50)
    searched = [
        [cut.index_of(c.id) for c, _ in got] for got in cut.search(mentions, 10)
    ]
    built = []
    for scores, _, rows in cut._batches(mentions):
        for r in rows:
            top = top_k(scores[r : r + 1], 10)[0]
            built.append([int(j) for j in top if scores[r, j] > 0])
    assert built == searched


@pytest.mark.parametrize(
    ("row", "keep", "layers"),
    [
        ([0.1, 0.5, 0.2, 0.9], 3, [[0.9], [0.5], [0.2]]),  # the largest, one a layer
        ([0.1, 0.5, 0.2, 0.9, 0.3, 0.4], 6, [[0.9], [0.5], [0.4, 0.3], [0.2, 0.1]]),
        ([0.3, 0.1], 5, [[0.3], [0.1]]),  # a short row keeps every name
    ],
)
def test_impact_layers_hold_each_rows_largest_weights_by_rank(
    monkeypatch, row, keep, layers
) -> None:
    """Layers of doubling depth (1, 1, 2, 4, ... here) by weight rank, largest first."""
    monkeypatch.setattr(tfidf, "FIRST_LAYER", 1)
    other = [1.0] + [0.0] * (len(row) - 1)
    built = ImpactLayers.build(sp.csr_matrix(np.asarray([row, other])), keep)
    depth = built.top.shape[1]
    got = [
        sorted(built.matrix[2 * l].data.tolist(), reverse=True) for l in range(depth)
    ]
    assert got == [pytest.approx(w) for w in layers]
    assert built.top[0] == pytest.approx([w[0] for w in layers])
    assert built.sizes[0].tolist() == [len(w) for w in layers]
    assert built.matrix[1].toarray().tolist() == [other]  # 3-gram 1's only layer


@pytest.mark.parametrize(
    ("budget", "read"),
    [
        (1, [(0, 0)]),  # the first pair always
        (2, [(0, 0), (1, 0)]),  # 0.8 × 0.9, then 0.6 × 1.0
        (3, [(0, 0), (1, 0), (0, 1)]),  # then 0.8 × 0.5
        (10, [(0, 0), (1, 0), (0, 1), (0, 2)]),  # everything: 0.8 × 0.2 last
    ],
)
def test_a_query_reads_the_highest_impacts_first(monkeypatch, budget, read) -> None:
    """(3-gram, layer) pairs by query weight × the layer's highest weight, in budget."""
    monkeypatch.setattr(tfidf, "FIRST_LAYER", 1)
    postings = sp.csr_matrix(np.asarray([[0.9, 0.5, 0.2], [1.0, 0.0, 0.0]]))
    built = ImpactLayers.build(postings, 3)
    query = sp.csr_matrix(np.asarray([[0.8, 0.6]], dtype=np.float32))
    spread = built.read(query, budget)
    columns = spread.indices.tolist()  # layer × vocabulary + 3-gram
    got = {(c % 2, c // 2): v for c, v in zip(columns, spread.data, strict=True)}
    weight = {0: 0.8, 1: 0.6}  # each pair carries its 3-gram's query weight
    assert got == pytest.approx({pair: weight[pair[0]] for pair in read})


def test_hnsw_rankings_match_the_scores_they_densify(tmp_path) -> None:
    names = [f"name {i}" for i in range(200)]
    from kfacel.data.records import Concept

    concepts = [Concept(f"C{i}", (names[2 * i], names[2 * i + 1])) for i in range(100)]
    settings = IndexSettings(exact_below=50, hnsw_m=8, ef_search=64, depth=32)
    dense = DenseGenerator(concepts, HashEncoder(), settings=settings)
    assert dense.approximate
    keys = ["name 7", "name 70", "other"]
    from_graph = dense._rankings(keys, [None] * 3, 10)
    densified = CandidateGenerator._rankings(dense, keys, [None] * 3, 10)
    for a, b in zip(from_graph, densified, strict=True):
        assert a.concepts.tolist() == b.concepts.tolist()
        assert a.scores.tolist() == b.scores.tolist()
        assert a.names.tolist() == b.names.tolist()


def test_fusion_over_an_approximate_channel_ranks_as_the_exact_fusion(dense) -> None:
    """Rankings read from channels equal the score matrices' fusion (eq. R1)."""
    mentions = ["heart attack", "pyrexia", "sleeplessness", "head ache", "nausea"]
    links = (("d1", "heart attack", "C1"), ("d2", "heart attack", "C1"))
    table = AliasTable((*links, ("d3", "heart attack", "C4"), ("d1", "pyrexia", "C3")))
    alias = AliasGenerator(SYNONYMS, table)
    exact = FusedGenerator(
        SYNONYMS, [TfidfGenerator(SYNONYMS, settings=EXACT), dense], alias
    )
    sparse = FusedGenerator(
        SYNONYMS,
        [
            TfidfGenerator(SYNONYMS, settings=LARGE, postings=10**9, rescored=10**9),
            dense,
        ],
        alias,
    )
    assert sparse.approximate
    assert not exact.approximate
    got, want = sparse.search(mentions, 5), exact.search(mentions, 5)
    assert [c.id for c, s in got[0] if s > 1] == ["C1", "C4"]  # the alias links first
    assert [[(c.id, s) for c, s in r] for r in got] == [
        [(c.id, s) for c, s in r] for r in want
    ]
