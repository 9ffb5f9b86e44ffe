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

``search(mentions, k)`` is what a linker in use asks of any channel: per mention, the
``k`` best concepts with a positive score and their scores, best first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

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

    def index_of(self, concept_id: str) -> int | None:
        """Position of ``concept_id`` (or an alternative id of it), None if unknown."""
        return self._index.get(concept_id)

    uses_docs = False
    """Whether a query's scores depend on its document (the alias table's do)."""
    expands_abbreviations = False
    """Whether a mention that is an abbreviation defined in its own text is retrieved
    by its definition (``retrieval/abbreviations.py``): retrieval methods."""
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

    def _batches(
        self, mentions: Sequence[str], docs: Sequence[str] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(scores [u, concepts], name scores [u, names], rows [b])``.

        Mentions are scored in consecutive batches; equal queries (mentions equal
        after lower-casing and collapsing spaces, and for a generator that reads
        documents, the same document) are scored once: row ``rows[i]`` of the score
        matrices belongs to the batch's ``i``-th mention.
        """
        batch = max(1, min(8192, _MAX_CELLS // max(1, len(self._names))))
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
            scores, by_name = self._concept_scores(
                [k for k, _ in distinct], [d for _, d in distinct]
            )
            yield scores, by_name, np.asarray([where[q] for q in queries], np.int64)

    def concept_scores(self, mentions: Sequence[str]) -> Iterator[np.ndarray]:
        """Yield score matrices ``[b, concepts]`` for consecutive batches."""
        for scores, _, rows in self._batches(mentions):
            yield scores[rows]

    def candidate(
        self, j: int, name_scores: np.ndarray | None = None, rank: int | None = None
    ) -> Candidate:
        """Concept ``j`` as a candidate, with its name closest to the mention.

        Args:
            j: the concept's position in the dictionary.
            name_scores: the mention's scores ``[names]`` of every name; None gives
                the preferred name only.
            rank: the concept's retrieval rank, kept when this generator's ranks
                are shown to the ranker (``ranks``).

        Returns:
            The candidate; ``synonym`` is set when a name other than the preferred
            one has the strictly highest positive score.
        """
        concept = self.concepts[j]
        synonym = None
        lo, hi = int(self._starts[j]), int(self._starts[j + 1])
        if name_scores is not None and hi - lo > 1:
            best = lo + int(np.argmax(name_scores[lo:hi]))  # ties: the first name
            if best != lo and name_scores[best] > 0:
                synonym = self._originals[best]
        shown = rank if self.ranks else None
        return Candidate(
            concept.id, concept.name, concept.semantic_type, synonym, shown
        )

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
        for scores, by_name, rows in self._batches(mentions):
            best = [
                [
                    (self.candidate(int(j), names, r + 1), float(row[j]))
                    for r, j in enumerate(top)
                    if row[j] > 0  # best first: the positive scores lead
                ]
                for row, names, top in zip(
                    scores, by_name, top_k(scores, k), strict=True
                )
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
