"""The TF-IDF channel: cosine similarity of character 3-gram TF-IDF vectors.

Character 3-grams within word boundaries, sublinear tf, fitted on every name of the
dictionary; after Murty et al., "Hierarchical losses and new resources for fine-grained
entity typing and linking", ACL 2018. The paper's channel for MedMentions-like data.

Below ``exact_below`` names (:class:`~kfacel.retrieval.ann.IndexSettings`, one million
by default) one sparse product scores a batch of mentions against every name. A
mention's common 3-grams are shared by a fifth of a large dictionary's names, so from
there on each mention is searched on **impact-ordered postings** instead (the classic
truncation of an inverted index, Anh and Moffat, "Impact transformation", SIGIR 2002):

1. each 3-gram keeps only its ``postings`` names of highest TF-IDF weight (a name
   short enough for the 3-gram to matter in it); the product of the mention with these
   truncated postings gives every name a partial score;
2. the ``rescored`` names of best partial score are scored exactly (their full vectors
   against the mention's), and concepts are ranked by the best of those names.

A concept none of whose names is among the rescored scores 0 for the mention, as a
name outside the HNSW graph's answer does for the dense channel. Recall against the
exact product is measured in ``docs/results.md`` ("Retrieval at UMLS scale"). A batch
of mentions is split over torch's threads (scipy's sparse products release the GIL).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
RESCORED = 4_000
"""Names per mention scored exactly after the truncated product."""


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
    ) -> None:
        """Fit the vectorizer on every name of ``concepts``.

        Args:
            concepts: the dictionary.
            settings: the size rule (default ``IndexSettings.from_env()``): any kind
                but ``exact`` searches impact-ordered postings from ``exact_below``
                names on, and a query's ``depth`` best concepts are its scores.
            postings: names kept per 3-gram on impact-ordered postings.
            rescored: names per mention scored exactly.
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
        if self.approximate:
            self._vectors = vectors.tocsr()
            self._postings = _impact_ordered(vectors.T.tocsr(), postings)
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
            partial = (part @ self._postings).tocsr()  # [r, names], truncated postings
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
        # the exact product's order of summation (query 3-grams outer), to the bit
        scores = np.asarray((query @ self._vectors[names].T.tocsr()).toarray()).ravel()
        return self._ranking_of_names(names, scores, k)


def _threads() -> int:
    """Threads a batch of mentions is searched on: torch's (``OMP_NUM_THREADS``)."""
    import torch

    return max(1, torch.get_num_threads())


def _impact_ordered(postings: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """``postings`` ``[vocabulary, names]`` with each row cut to its ``keep`` largest."""
    lengths = np.diff(postings.indptr)
    kept = np.ones(postings.nnz, dtype=bool)
    for row in np.flatnonzero(lengths > keep):
        lo, hi = postings.indptr[row], postings.indptr[row + 1]
        dropped = np.argpartition(-postings.data[lo:hi], keep)[keep:]
        kept[lo + dropped] = False
    rows = np.repeat(np.arange(postings.shape[0]), lengths)[kept]
    return sp.csr_matrix(
        (postings.data[kept], (rows, postings.indices[kept])), shape=postings.shape
    )


def _best_of_row(matrix: sp.csr_matrix, i: int, keep: int) -> np.ndarray:
    """Sorted column positions of row ``i``'s ``keep`` largest stored values."""
    lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
    columns, values = matrix.indices[lo:hi], matrix.data[lo:hi]
    if len(columns) > keep:
        columns = columns[np.argpartition(-values, keep)[:keep]]
    return np.sort(columns)
