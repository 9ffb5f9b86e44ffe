"""The TF-IDF channel: cosine similarity of character 3-gram TF-IDF vectors.

Character 3-grams within word boundaries, sublinear tf, fitted on every name of the
dictionary; after Murty et al., "Hierarchical losses and new resources for fine-grained
entity typing and linking", ACL 2018. The paper's channel for MedMentions-like data:
one sparse product scores a batch of mentions against every name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kfacel.data.records import Concept
from kfacel.retrieval.base import CandidateGenerator


class TfidfGenerator(CandidateGenerator):
    """Cosine similarity of character n-gram TF-IDF vectors of mention and names."""

    method = "tfidf"

    def __init__(self, concepts: Sequence[Concept]) -> None:
        """Fit the vectorizer on every name of ``concepts``."""
        super().__init__(concepts)
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True, dtype=np.float32
        )
        self._matrix_t = self._vectorizer.fit_transform(self._names).T.tocsr()

    def _name_scores(self, mentions: list[str]) -> np.ndarray:
        queries = self._vectorizer.transform(mentions)  # [u, vocabulary]
        return np.asarray((queries @ self._matrix_t).toarray())  # [u, names]
