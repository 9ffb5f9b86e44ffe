"""Reciprocal rank fusion: the alias table first, then the similarity channels (eq. R1).

The retrieval a linker in use runs (``--candidates fused``): TF-IDF and dense similarity
fused by their ranks (Cormack, Clarke and Büttcher, SIGIR 2009), after the concepts the
training data linked the exact mention string to.

Over a dictionary of millions of names, where a channel searches an approximate index
(``approximate``), the fusion reads each channel's sparse ranking rather than score
matrices over every name; a candidate is then shown by its closest name in the last
channel that ranked it (dense, then TF-IDF), or by its preferred name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kfacel.data.records import Concept
from kfacel.retrieval.alias import AliasGenerator
from kfacel.retrieval.base import CandidateGenerator, Ranking, top_k

RRF_K = 60
"""Reciprocal rank fusion's constant (Cormack, Clarke and Büttcher, SIGIR 2009)."""
_NONE = np.zeros(0, dtype=np.int64)


class FusedGenerator(CandidateGenerator):
    """The alias table first, then reciprocal rank fusion of similarity channels.

    A concept's score is (eq. R1)

        s(c) = [n(m, c) > 0]·(1 + n(m, c) / (n(m) + 1)) + Σ_ch 1 / (RRF_K + r_ch(c))

    where ``n`` are the alias table's counts (``n(m)`` summed over the dictionary's
    concepts) and ``r_ch(c)`` is the 1-based rank of ``c`` in channel ``ch`` when ``c``
    is among the channel's ``depth`` best with a positive score (no term otherwise).
    The alias term is ≥ 1 and a fused similarity sum < 1, so concepts the training
    data linked this exact string to come first, most linked first, and the rest
    follow the fusion of TF-IDF and dense similarity (ties broken by the fusion).

    Attributes:
        channels: the similarity generators fused (``tfidf``, ``dense``).
        alias: the alias channel, or None.
    """

    method = "fused"
    ranks = True
    expands_abbreviations = True

    def __init__(
        self,
        concepts: Sequence[Concept],
        channels: Sequence[CandidateGenerator],
        alias: AliasGenerator | None = None,
        *,
        depth: int = 64,
    ) -> None:
        """Fuse ``channels`` (each over the same ``concepts``) after ``alias``."""
        super().__init__(concepts)
        if not channels:
            raise ValueError("fusion needs at least one similarity channel")
        self.channels = tuple(channels)
        self.alias = alias
        self.uses_docs = alias is not None
        self.depth = depth
        self.approximate = any(c.approximate for c in self.channels)

    def _concept_scores(
        self, keys: list[str], docs: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.approximate:
            return self._from_rankings(self._rankings(keys, docs, len(self.concepts)))
        # similarity reads no document: score each distinct mention once, even when
        # the alias table makes (mention, document) the unit of a query
        distinct = list(dict.fromkeys(keys))
        where = {k: i for i, k in enumerate(distinct)}
        rows_of = np.asarray([where[k] for k in keys], dtype=np.int64)
        similar = np.zeros((len(distinct), len(self.concepts)), dtype=np.float64)
        by_name = None
        for channel in self.channels:
            scores, names = channel._concept_scores(distinct, [None] * len(distinct))
            by_name = names  # the last channel names the synonyms (dense if given)
            top = top_k(scores, self.depth)
            rows = np.arange(len(distinct))[:, None]
            credit = 1.0 / (RRF_K + 1 + np.arange(top.shape[1]))
            similar[rows, top] += np.where(scores[rows, top] > 0, credit, 0.0)
        assert by_name is not None
        fused = similar[rows_of]
        if self.alias is not None:
            counts = self.alias.counts(keys, docs)
            total = counts.sum(axis=1, keepdims=True)
            fused += np.where(counts > 0, 1 + counts / (total + 1), 0.0)
        return fused.astype(np.float32), by_name[rows_of]

    def _rankings(
        self, keys: list[str], docs: list[str | None], k: int
    ) -> list[Ranking]:
        if not self.approximate:
            return super()._rankings(keys, docs, k)
        # similarity reads no document: rank each distinct mention once
        where = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        channels = [
            c._rankings(list(where), [None] * len(where), self.depth)
            for c in self.channels
        ]
        counts = self.alias.counts(keys, docs) if self.alias is not None else None
        out = []
        for i, key in enumerate(keys):
            ranked = [rankings[where[key]] for rankings in channels]
            alias = counts[i] if counts is not None else None
            out.append(Ranking.of(*self._fused(ranked, alias), k))
        return out

    def _fused(
        self, ranked: list[Ranking], counts: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eq. R1 over one query's channel rankings and its alias counts ``[concepts]``.

        Returns the distinct concepts, their fused scores and closest names (the last
        channel's that ranked the concept, else its first name).
        """
        linked = np.flatnonzero(counts) if counts is not None else _NONE
        every = np.concatenate([*(r.concepts for r in ranked), linked])
        concepts, where = np.unique(every, return_inverse=True)
        credit = [1.0 / (RRF_K + 1 + np.arange(len(r.concepts))) for r in ranked]
        scores = np.bincount(
            where,
            np.concatenate([*credit, np.zeros(len(linked))]),
            minlength=len(concepts),
        )
        if counts is not None and len(linked):
            n = counts[concepts]
            scores += np.where(n > 0, 1 + n / (counts.sum() + 1), 0.0)
        names = self._starts[concepts].copy()
        for r in ranked:  # later channels overwrite: the last one's name stands
            names[np.searchsorted(concepts, r.concepts)] = r.names
        return concepts, scores.astype(np.float32), names

    def channel_generators(self) -> dict[str, CandidateGenerator]:
        """The fused channels by method, the alias table's included."""
        out = {c.method: c for c in self.channels}
        return out | ({"alias": self.alias} if self.alias is not None else {})
