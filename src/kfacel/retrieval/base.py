"""The retrieval interface: a channel ranks a dictionary's concepts for mention strings.

Every retrieval channel is a :class:`CandidateGenerator` over the same dictionary, one
module each (``tfidf``, ``bm25``, ``dense``, ``alias``, and ``fusion`` of them). The
base class indexes the concepts and their names and does the rest the same way for all:
it scores a batch of distinct mentions at once, gives each concept the best score of
its names, ranks with :func:`top_k` (ties broken by dictionary order, so rankings are
deterministic) and turns a concept into a :class:`~kfacel.data.records.Candidate`. A
channel supplies the scores alone:

- ``_name_scores(keys) -> [u, names]``: the similarity of each normalized mention to
  every name (TF-IDF, BM25, dense), or
- ``_concept_scores(keys, docs) -> ([u, concepts], [u, names])``: scores of whole
  concepts, for a channel that reads documents or fuses others (alias, fusion).

A channel over a dictionary too large for score matrices over every name (millions of
names: the dense channel's HNSW graph, TF-IDF's impact-ordered postings) supplies
``_rankings(keys, docs, k)`` instead, each query's best concepts as a sparse
:class:`Ranking`, and derives its score matrices from them (:meth:`_from_rankings`).

``search(mentions, k)`` is what a linker in use asks of any channel: per mention, the
``k`` best concepts with a positive score and their scores, best first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kfacel.data.records import Candidate, Concept

_MAX_CELLS = 1 << 24
"""Largest batch × names score matrix held at once (64 MiB of float32)."""


def dictionary_digest(concepts: Sequence[Concept]) -> str:
    """sha256 of a dictionary's ids and names in order: equal digests, equal indexes."""
    digest = hashlib.sha256()
    for concept in concepts:
        digest.update("\x1f".join((concept.id, *concept.names)).encode() + b"\x1e")
    return digest.hexdigest()


def _key(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Ranking:
    """One query's best concepts with a positive score, best first (ties by position).

    Attributes:
        concepts: dictionary positions ``[r]``.
        scores: their scores ``[r]``, all positive, non-increasing.
        names: each concept's name closest to the query (a position in the
            generator's name list; the concept's first name when none is closer).
    """

    concepts: np.ndarray
    scores: np.ndarray
    names: np.ndarray

    @classmethod
    def of(
        cls, concepts: np.ndarray, scores: np.ndarray, names: np.ndarray, k: int
    ) -> Ranking:
        """The ``k`` best of ``concepts`` (distinct) with a positive score, ordered."""
        keep = scores > 0
        concepts, scores, names = concepts[keep], scores[keep], names[keep]
        order = np.lexsort((concepts, -scores))[:k]
        return cls(concepts[order], scores[order], names[order])


class CandidateGenerator:
    """Ranks the concepts of a dictionary for mention strings (the base of every channel).

    Attributes:
        concepts: the dictionary, in the order that breaks ties.
        method: the channel's name, one of ``retrieval.methods.METHODS``.
    """

    method = ""

    def __init__(self, concepts: Sequence[Concept]) -> None:
        """Index the names of ``concepts``; ids must be distinct."""
        if not concepts:
            raise ValueError("the concept dictionary is empty")
        self.concepts = tuple(concepts)
        self._index: dict[str, int] = {}
        for i, concept in enumerate(self.concepts):
            for ident in (concept.id, *concept.alt_ids):
                if ident in self._index:
                    raise ValueError(
                        f"concept id {ident!r} appears twice in the dictionary"
                    )
                self._index[ident] = i
        names: list[str] = []
        originals: list[str] = []
        starts: list[int] = []
        for concept in self.concepts:
            starts.append(len(names))
            first = {_key(n): n for n in reversed(concept.names)} or {"": ""}
            for key in dict.fromkeys(_key(n) for n in concept.names) or [""]:
                names.append(key)
                originals.append(first[key])
        self._names = names
        self._originals = originals  # as the dictionary spells them
        self._alphabet = frozenset(ch for n in names for ch in n if ch.isalnum())
        self._starts = np.asarray([*starts, len(names)], dtype=np.int64)
        self._owner = np.repeat(np.arange(len(self.concepts)), np.diff(self._starts))

    def index_of(self, concept_id: str) -> int | None:
        """Position of ``concept_id`` (or an alternative id of it), None if unknown."""
        return self._index.get(concept_id)

    uses_docs = False
    """Whether a query's scores depend on its document (the alias table's do)."""
    expands_abbreviations = False
    """Whether a mention that is an abbreviation defined in its own text is retrieved
    by its definition (``retrieval/abbreviations.py``): retrieval methods."""
    approximate = False
    """Whether the channel searches an approximate index (a dictionary of millions of
    names): its ``_rankings`` are its answer, and its score matrices hold them only."""
    ranks = False
    """Whether candidates carry their retrieval rank (``Candidate.rank``): retrieval
    methods, whose rank is evidence the ranker should weigh, not the paper's."""

    def _name_scores(self, mentions: list[str]) -> np.ndarray:
        """Scores ``[b, names]`` of distinct normalized mentions against every name."""
        raise NotImplementedError

    def _concept_scores(
        self, keys: list[str], docs: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [u, concepts], name scores [u, names])`` of distinct queries.

        A concept scores the best of its names. ``keys`` are normalized mentions,
        ``docs`` their documents (None: unknown, or not used by this generator).
        """
        by_name = self._name_scores(keys)  # [u, names]
        if len(self._names) == len(self.concepts):
            return by_name, by_name
        return np.maximum.reduceat(by_name, self._starts[:-1], axis=1), by_name

    def _queries(
        self,
        mentions: Sequence[str],
        docs: Sequence[str] | None = None,
        *,
        ranked: bool = False,
    ) -> Iterator[tuple[list[str], list[str | None], np.ndarray]]:
        """Yield ``(keys, docs, rows)``: consecutive batches' distinct queries.

        Equal queries (mentions equal after lower-casing and collapsing spaces, and
        for a generator that reads documents, the same document) are scored once: the
        batch's ``i``-th mention is distinct query ``rows[i]``. A batch's score
        matrices over every name (or, ``ranked`` by an approximate channel, over every
        concept) stay within ``_MAX_CELLS``.
        """
        width = len(self.concepts) if ranked and self.approximate else len(self._names)
        batch = max(1, min(8192, _MAX_CELLS // max(1, width)))
        for lo in range(0, len(mentions), batch):
            keys = [_key(m) for m in mentions[lo : lo + batch]]
            where_docs = (
                list(docs[lo : lo + batch])
                if docs is not None and self.uses_docs
                else [None] * len(keys)
            )
            queries = list(zip(keys, where_docs, strict=True))
            distinct = list(dict.fromkeys(queries))
            where = {q: i for i, q in enumerate(distinct)}
            rows = np.asarray([where[q] for q in queries], np.int64)
            yield [k for k, _ in distinct], [d for _, d in distinct], rows

    def _batches(
        self, mentions: Sequence[str], docs: Sequence[str] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(scores [u, concepts], name scores [u, names], rows [b])``.

        Row ``rows[i]`` of the score matrices belongs to the batch's ``i``-th mention
        (:meth:`_queries`).
        """
        for keys, docs_of, rows in self._queries(mentions, docs):
            scores, by_name = self._concept_scores(keys, docs_of)
            yield scores, by_name, rows

    def concept_scores(self, mentions: Sequence[str]) -> Iterator[np.ndarray]:
        """Yield score matrices ``[b, concepts]`` for consecutive batches."""
        for scores, _, rows in self._batches(mentions):
            yield scores[rows]

    def closest_name(self, j: int, name_scores: np.ndarray | None) -> int:
        """Position of concept ``j``'s name with the strictly highest positive score.

        The concept's first (preferred) name when ``name_scores`` (``[names]``, one
        query's) is None, no name scores above 0, or the first name ties the best.
        """
        lo, hi = int(self._starts[j]), int(self._starts[j + 1])
        if name_scores is None or hi - lo == 1:
            return lo
        best = lo + int(np.argmax(name_scores[lo:hi]))  # ties: the first name
        return best if name_scores[best] > 0 else lo

    def candidate(
        self, j: int, name: int | None = None, rank: int | None = None
    ) -> Candidate:
        """Concept ``j`` as a candidate, shown by its name closest to the mention.

        Args:
            j: the concept's position in the dictionary.
            name: the position of its name closest to the mention
                (:meth:`closest_name`); None gives the preferred name only.
            rank: the concept's retrieval rank, kept when this generator's ranks
                are shown to the ranker (``ranks``).

        Returns:
            The candidate; ``synonym`` is set when ``name`` is not the preferred one.
        """
        concept = self.concepts[j]
        first = int(self._starts[j])
        synonym = self._originals[name] if name is not None and name != first else None
        shown = rank if self.ranks else None
        return Candidate(
            concept.id, concept.name, concept.semantic_type, synonym, shown
        )

    def _rankings(
        self, keys: list[str], docs: list[str | None], k: int
    ) -> list[Ranking]:
        """Each distinct query's ``k`` best concepts (from the score matrices)."""
        scores, by_name = self._concept_scores(keys, docs)
        out = []
        for row, names, top in zip(scores, by_name, top_k(scores, k), strict=True):
            top = top[row[top] > 0]  # best first: the positive scores lead
            closest = [self.closest_name(int(j), names) for j in top]
            out.append(Ranking(top, row[top], np.asarray(closest, dtype=np.int64)))
        return out

    def _ranking_of_names(
        self, names: np.ndarray, scores: np.ndarray, k: int
    ) -> Ranking:
        """The ``k`` best concepts of distinct scored ``names``: each scores its best.

        Only the names scoring at least the ``m``-th best score are ordered, ``m``
        growing until they hold ``k`` concepts: a concept with none of them scores
        below every concept with one, so the ranking is the one over all ``names``.
        """
        m = 8 * k
        while True:
            if m >= len(names):
                return self._rank_names(names, scores, k)
            cut = len(scores) - m
            head = np.flatnonzero(scores >= np.partition(scores, cut)[cut])
            ranking = self._rank_names(names[head], scores[head], k)
            if len(ranking.concepts) >= k:
                return ranking
            m *= 4

    def _rank_names(self, names: np.ndarray, scores: np.ndarray, k: int) -> Ranking:
        order = np.lexsort((names, -scores))  # each concept's best name first
        names, scores = names[order], scores[order]
        concepts = self._owner[names]
        _, first = np.unique(concepts, return_index=True)
        return Ranking.of(concepts[first], scores[first], names[first], k)

    def _from_rankings(
        self, rankings: Sequence[Ranking]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score matrices ``([u, concepts], [u, names])`` holding only ``rankings``.

        Every concept outside a query's ranking scores 0 for it, and a ranked concept's
        closest name holds the concept's score, its other names 0, so that
        :meth:`closest_name` finds it again.
        """
        scores = np.zeros((len(rankings), len(self.concepts)), dtype=np.float32)
        by_name = np.zeros((len(rankings), len(self._names)), dtype=np.float32)
        for i, ranking in enumerate(rankings):
            scores[i, ranking.concepts] = ranking.scores
            by_name[i, ranking.names] = ranking.scores
        return scores, by_name

    def search(
        self, mentions: Sequence[str], k: int
    ) -> list[list[tuple[Candidate, float]]]:
        """The ``k`` best concepts of each mention with a positive score, best first.

        A concept scoring 0 shares nothing with the mention (no character 3-gram, no
        word, no alias link), so ranking it would be arbitrary: a mention gets fewer
        than ``k`` concepts when fewer have evidence, and none when none has. A mention
        with no letter or digit the dictionary's names use (another script, symbols)
        gets none from any channel: a sentence encoder would still rank the names
        least unlike it.

        Args:
            mentions: mention strings.
            k: how many concepts per mention at most (capped at the dictionary's size).

        Returns:
            For each mention, ``(candidate, score)`` pairs, best first, ties in
            dictionary order, every score positive (an empty list: no candidate);
            each candidate carries its name closest to the mention.
        """
        out: list[list[tuple[Candidate, float]]] = []
        for keys, docs, rows in self._queries(mentions, ranked=True):
            best = [
                [
                    (self.candidate(int(j), int(name), r + 1), float(score))
                    for r, (j, score, name) in enumerate(
                        zip(ranked.concepts, ranked.scores, ranked.names, strict=True)
                    )
                ]
                for ranked in self._rankings(keys, docs, min(k, len(self.concepts)))
            ]
            out.extend(best[r] for r in rows)
        pairs = zip(mentions, out, strict=True)
        return [found if self.writes_like(m) else [] for m, found in pairs]

    def writes_like(self, mention: str) -> bool:
        """Whether ``mention`` has a letter or digit that some name of the dictionary has.

        >>> from kfacel.data.records import Concept
        >>> gen = CandidateGenerator([Concept("D1", ("Hemophilia",))])
        >>> gen.writes_like("hemophilia A"), gen.writes_like("血友病"), gen.writes_like("∑∆")
        (True, False, False)
        """
        return any(ch in self._alphabet for ch in _key(mention))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[b, k]`` of the largest scores of each row, ties by index.

    >>> top_k(np.array([[0.1, 0.5, 0.5, 0.2]]), 3).tolist()
    [[1, 2, 3]]
    """
    n = scores.shape[1]
    k = min(k, n)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else None
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for r, row in enumerate(scores):
        # argpartition splits ties at the boundary arbitrarily: widen to all tied values
        if part is None:
            pool = np.arange(n)
        else:
            cut = row[part[r]].min()
            above = np.flatnonzero(row > cut)
            pool = np.concatenate([above, np.flatnonzero(row == cut)[: k - len(above)]])
        order = np.lexsort((pool, -row[pool]))
        out[r] = pool[order[:k]]
    return out
