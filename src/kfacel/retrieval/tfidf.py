"""The TF-IDF channel: cosine similarity of character 3-gram TF-IDF vectors.

Character 3-grams within word boundaries, sublinear tf, fitted on every name of the
dictionary; after Murty et al., "Hierarchical losses and new resources for fine-grained
entity typing and linking", ACL 2018. The paper's channel for MedMentions-like data.

Below ``exact_below`` names (:class:`~kfacel.retrieval.ann.IndexSettings`, one million
by default) one sparse product scores a batch of mentions against every name. A
mention's common 3-grams are shared by a fifth of a large dictionary's names, so from
there on each mention is searched on **impact-ordered postings** instead (the classic
truncation of an inverted index, Anh and Moffat, "Impact transformation", SIGIR 2002),
read highest impacts first up to a budget (score-at-a-time "anytime" ranking, Lin and
Trotman, ICTIR 2015):

1. each 3-gram keeps only its ``postings`` names of highest TF-IDF weight (a name
   short enough for the 3-gram to matter in it), in layers of doubling depth by weight
   rank (the first 256, the next 256, the next 512, ...);
2. a mention reads the layers in decreasing order of impact (its 3-gram's query weight
   times the layer's highest name weight) until it has read ``budget`` postings, so a
   rare 3-gram of the mention is read deep and a common one only where its names are
   short; the product of the mention with what it read gives every name a partial score;
3. the ``rescored`` names of best partial score are scored exactly (their full vectors
   against the mention's), and concepts are ranked by the best of those names.

A concept none of whose names is among the rescored scores 0 for the mention, as a
name outside the HNSW graph's answer does for the dense channel. Recall against the
exact product is measured in ``docs/results.md`` ("Retrieval at UMLS scale"). A batch
of mentions is split over torch's threads (scipy's sparse products release the GIL).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from kfacel.data.records import Concept
from kfacel.retrieval.ann import IndexKind, IndexSettings, choose_kind
from kfacel.retrieval.base import CandidateGenerator, Ranking

POSTINGS = 50_000
"""Names kept per 3-gram on impact-ordered postings (the highest-weighted). Chosen on
NCBI-disease dev against a 3M-name dictionary: 50,000 gives the exact search's
recall@32, 30,000 loses 0.8 points of it (``docs/results.md``)."""
RESCORED = 16_000
"""Names per mention scored exactly after the truncated product."""
BUDGET = 100_000
"""Postings a mention reads at most, highest impacts first. With ``RESCORED``, the
fastest setting that keeps the exact search's recall@32 on NCBI-disease dev against a
3M-name dictionary (``benchmarks/tfidf_postings.py``, ``docs/results.md``): reading
100,000 postings and rescoring 4,000 names loses 1.1 points of it, rescoring 16,000
none, and it is 4× the speed of reading all 50,000 names of every 3-gram."""
FIRST_LAYER = 256
"""Names in the first layer of a 3-gram's impact-ordered postings; each next doubles."""


class TfidfGenerator(CandidateGenerator):
    """Cosine similarity of character n-gram TF-IDF vectors of mention and names."""

    method = "tfidf"

    def __init__(
        self,
        concepts: Sequence[Concept],
        *,
        settings: IndexSettings | None = None,
        postings: int = POSTINGS,
        rescored: int = RESCORED,
        budget: int = BUDGET,
    ) -> None:
        """Fit the vectorizer on every name of ``concepts``.

        Args:
            concepts: the dictionary.
            settings: the size rule (default ``IndexSettings.from_env()``): any kind
                but ``exact`` searches impact-ordered postings from ``exact_below``
                names on, and a query's ``depth`` best concepts are its scores.
            postings: names kept per 3-gram on impact-ordered postings.
            rescored: names per mention scored exactly.
            budget: postings a mention reads at most, highest impacts first.
        """
        super().__init__(concepts)
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True, dtype=np.float32
        )
        vectors = self._vectorizer.fit_transform(self._names)  # [names, vocabulary]
        settings = settings if settings is not None else IndexSettings.from_env()
        self.approximate = (
            choose_kind(len(self._names), settings) is not IndexKind.EXACT
        )
        self.depth = settings.depth
        self.rescored = rescored
        self.budget = budget
        if self.approximate:
            self._vectors = vectors.tocsr()
            self._vectors.sort_indices()  # each name's 3-grams in vocabulary order
            self._layers = ImpactLayers.build(vectors.T.tocsr(), postings)
        else:
            self._matrix_t = vectors.T.tocsr()

    def _name_scores(self, mentions: list[str]) -> np.ndarray:
        queries = self._vectorizer.transform(mentions)  # [u, vocabulary]
        return np.asarray((queries @ self._matrix_t).toarray())  # [u, names]

    def _concept_scores(
        self, keys: list[str], docs: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.approximate:
            return super()._concept_scores(keys, docs)
        return self._from_rankings(self._rankings(keys, docs, self.depth))

    def _rankings(
        self, keys: list[str], docs: list[str | None], k: int
    ) -> list[Ranking]:
        if not self.approximate:
            return super()._rankings(keys, docs, k)
        queries = self._vectorizer.transform(keys)  # [u, vocabulary]
        parts = np.array_split(np.arange(len(keys)), min(len(keys), _threads()))

        def ranked(rows: np.ndarray) -> list[Ranking]:
            part = queries[rows]
            read = self._layers.read(part, self.budget)  # [r, layers × vocabulary]
            partial = (read @ self._layers.matrix).tocsr()  # [r, names]
            return [
                self._rescore(part[i], _best_of_row(partial, i, self.rescored), k)
                for i in range(len(rows))
            ]

        if len(parts) == 1:
            return ranked(parts[0])
        with ThreadPoolExecutor(len(parts)) as pool:  # scipy's products free the GIL
            return [r for rankings in pool.map(ranked, parts) for r in rankings]

    def _rescore(self, query: Any, names: np.ndarray, k: int) -> Ranking:
        """The ``k`` best concepts by the exact scores of ``names`` (sorted positions)."""
        # each name sums its 3-grams in vocabulary order, as the exact product does
        # (the query's 3-grams outer): the same float32 sums, to the bit
        dense = np.zeros(query.shape[1], dtype=np.float32)
        dense[query.indices] = query.data
        scores = self._vectors[names] @ dense
        return self._ranking_of_names(names, scores, k)


def _threads() -> int:
    """Threads a batch of mentions is searched on: torch's (``OMP_NUM_THREADS``)."""
    import torch

    return max(1, torch.get_num_threads())


@dataclass(frozen=True)
class ImpactLayers:
    """Impact-ordered postings in layers of doubling depth by weight rank.

    Row ``l × vocabulary + t`` of ``matrix`` ``[layers × vocabulary, names]`` holds
    3-gram ``t``'s names whose weight ranks in layer ``l`` (the first ``FIRST_LAYER``,
    then each layer doubles the depth, up to the ``keep`` highest); ``top[t, l]`` is the
    layer's highest weight (0 where it is empty) and ``sizes[t, l]`` its names.
    """

    matrix: sp.csr_matrix
    top: np.ndarray
    sizes: np.ndarray

    @classmethod
    def build(cls, postings: sp.csr_matrix, keep: int) -> ImpactLayers:
        """Layers of ``postings`` ``[vocabulary, names]``, each row cut to its ``keep`` largest."""
        vocabulary = postings.shape[0]
        lengths = np.diff(postings.indptr)
        bounds = _layer_bounds(min(keep, int(lengths.max(initial=1))))
        top = np.zeros((vocabulary, len(bounds)), dtype=np.float32)
        sizes = np.zeros((vocabulary, len(bounds)), dtype=np.int64)
        rows, columns, values = [], [], []
        for t in np.flatnonzero(lengths):
            lo, hi = postings.indptr[t], postings.indptr[t + 1]
            data = postings.data[lo:hi]
            order = _largest_first(data, keep)
            layer = np.searchsorted(bounds, np.arange(len(order)), side="right")
            first = np.searchsorted(layer, np.arange(len(bounds)))  # each layer's start
            sizes[t] = np.bincount(layer, minlength=len(bounds))
            top[t] = np.where(
                sizes[t] > 0, data[order[np.minimum(first, len(order) - 1)]], 0
            )
            rows.append(layer * vocabulary + t)
            columns.append(postings.indices[lo:hi][order])
            values.append(data[order])
        shape = (len(bounds) * vocabulary, postings.shape[1])
        return cls(_csr(values, rows, columns, shape), top, sizes)

    def read(self, queries: sp.csr_matrix, budget: int) -> sp.csr_matrix:
        """``queries`` ``[u, vocabulary]`` on the layers each reads: ``[u, layers × vocabulary]``.

        A query reads its (3-gram, layer) pairs in decreasing order of impact (query
        weight × the layer's highest weight), while the names read stay within
        ``budget`` (the first pair always); a 3-gram's layers are read in order, as its
        highest weights fall layer by layer.
        """
        vocabulary, layers = self.top.shape
        rows, columns, values = [], [], []
        for i in range(queries.shape[0]):
            lo, hi = queries.indptr[i], queries.indptr[i + 1]
            terms, weights = queries.indices[lo:hi], queries.data[lo:hi]
            impact = (weights[:, None] * self.top[terms]).ravel()  # [terms × layers]
            order = np.argsort(-impact, kind="stable")
            order = order[impact[order] > 0]
            spent = np.cumsum(self.sizes[terms].ravel()[order])
            order = order[: max(1, int(np.searchsorted(spent, budget, side="right")))]
            term, layer = np.divmod(order, layers)
            rows.append(np.full(len(order), i))
            columns.append(layer * vocabulary + terms[term])
            values.append(weights[term])
        return _csr(values, rows, columns, (queries.shape[0], layers * vocabulary))


def _csr(
    values: list[np.ndarray],
    rows: list[np.ndarray],
    columns: list[np.ndarray],
    shape: tuple[int, int],
) -> sp.csr_matrix:
    """The float32 matrix of ``shape`` holding the concatenated (row, column, value)s."""
    if not values:
        return sp.csr_matrix(shape, dtype=np.float32)
    coordinates = (np.concatenate(rows), np.concatenate(columns))
    return sp.csr_matrix((np.concatenate(values), coordinates), shape=shape)


def _layer_bounds(depth: int) -> np.ndarray:
    """Each layer's end rank: ``FIRST_LAYER``, twice that, ... up to ``depth``."""
    bounds = [FIRST_LAYER]
    while bounds[-1] < depth:
        bounds.append(2 * bounds[-1])
    bounds[-1] = depth
    return np.asarray(bounds)


def _largest_first(data: np.ndarray, keep: int) -> np.ndarray:
    """Positions of ``data``'s ``keep`` largest values, largest first (ties: in order)."""
    if len(data) > keep:
        kept = np.argpartition(-data, keep - 1)[:keep]
        return kept[np.argsort(-data[kept], kind="stable")]
    return np.argsort(-data, kind="stable")


def _best_of_row(matrix: sp.csr_matrix, i: int, keep: int) -> np.ndarray:
    """Sorted column positions of row ``i``'s ``keep`` largest stored values."""
    lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
    columns, values = matrix.indices[lo:hi], matrix.data[lo:hi]
    if len(columns) > keep:
        columns = columns[np.argpartition(-values, keep)[:keep]]
    return np.sort(columns)
