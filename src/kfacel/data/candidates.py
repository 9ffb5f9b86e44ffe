"""Candidate generation: rank a dictionary's concepts by the similarity of their names.

Two generators, both over every name of every concept (a concept scores the best of its
names):

- ``tfidf``: cosine similarity of character 3-gram TF-IDF vectors (within word
  boundaries, sublinear tf), after Murty et al., "Hierarchical losses and new resources
  for fine-grained entity typing and linking", ACL 2018. For MedMentions-like data.
- ``bm25``: Okapi BM25 (``bm25s``, k1 = 1.5, b = 0.75) of lower-cased word tokens of the
  mention against each name. For MedNorm-like data.

Scores are computed for a batch of distinct mentions at once (a sparse product for
TF-IDF), so tens of thousands of mentions over tens of thousands of concepts take
seconds. Ties are broken by dictionary order, so rankings are deterministic.

``make_candidates`` builds the candidate lists of a task: the gold plus the C−1 best
other concepts; when fewer than C−1 others have a positive score the remaining places
are drawn at random (seeded) from the zero-score concepts, so that filler candidates are
not always the dictionary's first entries. The list is then shuffled with the same RNG.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kfacel.data.aliases import AliasTable, mention_key
from kfacel.data.records import Candidate, Concept

if TYPE_CHECKING:
    from kfacel.data.dense import SentenceEncoder

METHODS = ("tfidf", "bm25", "dense", "alias", "fused")
RETRIEVAL_METHODS = ("alias", "fused")
"""Methods that read the training alias table: a task built with one is trained on
what retrieval returns (see ``data.tasks.prepare_task``)."""
_MAX_CELLS = 1 << 24
"""Largest batch × names score matrix held at once (64 MiB of float32)."""
_WORD = re.compile(r"\w+")


def dictionary_digest(concepts: Sequence[Concept]) -> str:
    """sha256 of a dictionary's ids and names in order: equal digests, equal indexes."""
    digest = hashlib.sha256()
    for concept in concepts:
        digest.update("\x1f".join((concept.id, *concept.names)).encode() + b"\x1e")
    return digest.hexdigest()


def _key(text: str) -> str:
    return " ".join(text.lower().split())


class CandidateGenerator:
    """Ranks the concepts of a dictionary for mention strings (a base for the methods).

    Attributes:
        concepts: the dictionary, in the order that breaks ties.
        method: ``"tfidf"`` or ``"bm25"``.
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
        self._starts = np.asarray([*starts, len(names)], dtype=np.int64)

    def index_of(self, concept_id: str) -> int | None:
        """Position of ``concept_id`` (or an alternative id of it), None if unknown."""
        return self._index.get(concept_id)

    uses_docs = False
    """Whether a query's scores depend on its document (the alias table's do)."""
    expands_abbreviations = False
    """Whether a mention that is an abbreviation defined in its own text is retrieved
    by its definition (``data/abbreviations.py``): retrieval methods."""
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
        than ``k`` concepts when fewer have evidence, and none when none has.

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
        return out


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


class BM25Generator(CandidateGenerator):
    """Okapi BM25 of the mention's words against each name's words."""

    method = "bm25"

    def __init__(self, concepts: Sequence[Concept]) -> None:
        """Index the word tokens of every name of ``concepts``."""
        super().__init__(concepts)
        import bm25s

        # bm25s sets its logger to DEBUG on import; let the application's level rule
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
        self._bm25 = bm25s.BM25(k1=1.5, b=0.75)
        tokens = [_WORD.findall(n) or [""] for n in self._names]
        self._bm25.index(tokens, show_progress=False)

    def _name_scores(self, mentions: list[str]) -> np.ndarray:
        out = np.zeros((len(mentions), len(self._names)), dtype=np.float32)
        for i, mention in enumerate(mentions):
            tokens = _WORD.findall(mention)
            if tokens:
                out[i] = self._bm25.get_scores(tokens)
        return out


class DenseGenerator(CandidateGenerator):
    """Cosine similarity of sentence-encoder embeddings of mention and names."""

    method = "dense"
    ranks = True

    def __init__(
        self,
        concepts: Sequence[Concept],
        encoder: SentenceEncoder | None = None,
        *,
        progress: bool = False,
    ) -> None:
        """Embed every name of ``concepts`` (or read them from the cache)."""
        super().__init__(concepts)
        from kfacel.data.dense import NameIndex, SentenceEncoder

        encoder = encoder if encoder is not None else SentenceEncoder()
        self.index = NameIndex.build(encoder, self._originals, progress=progress)

    def _name_scores(self, mentions: list[str]) -> np.ndarray:
        return self.index.scores(self.index.encoder.encode(mentions))


class AliasGenerator(CandidateGenerator):
    """The training alias table: how often each concept was a mention string's gold.

    A concept's score is ``n(m, c)``, the number of training links of the mention's
    normalized string ``m`` to it, the query's own document left out
    (:class:`~kfacel.data.aliases.AliasTable`); unseen strings score 0 everywhere.
    """

    method = "alias"
    uses_docs = True
    ranks = True

    def __init__(self, concepts: Sequence[Concept], aliases: AliasTable) -> None:
        """Look ``aliases``' gold ids up in ``concepts`` (unknown ids are ignored)."""
        super().__init__(concepts)
        self.aliases = aliases

    def counts(self, keys: list[str], docs: list[str | None]) -> np.ndarray:
        """``n(m, c)`` ``[u, concepts]`` of normalized mentions in their documents."""
        scores = np.zeros((len(keys), len(self.concepts)), dtype=np.float32)
        for i, (key, doc) in enumerate(zip(keys, docs, strict=True)):
            for concept_id, n in self.aliases.links_of(mention_key(key), doc).items():
                j = self.index_of(concept_id)
                if j is not None:
                    scores[i, j] += n
        return scores

    def _concept_scores(
        self, keys: list[str], docs: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        names = np.zeros((len(keys), len(self._names)), dtype=np.float32)
        return self.counts(keys, docs), names  # no name is closer than another


RRF_K = 60
"""Reciprocal rank fusion's constant (Cormack, Clarke and Büttcher, SIGIR 2009)."""


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

    def _concept_scores(
        self, keys: list[str], docs: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
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

    def channel_generators(self) -> dict[str, CandidateGenerator]:
        """The fused channels by method, the alias table's included."""
        out = {c.method: c for c in self.channels}
        return out | ({"alias": self.alias} if self.alias is not None else {})


def build_generator(
    method: str,
    concepts: Sequence[Concept],
    *,
    aliases: AliasTable | None = None,
    encoder: SentenceEncoder | None = None,
    progress: bool = False,
) -> CandidateGenerator:
    """A candidate generator over ``concepts`` (one of :data:`METHODS`).

    Args:
        method: ``"tfidf"``, ``"bm25"``, ``"dense"``, ``"alias"`` or ``"fused"``
            (alias table, then TF-IDF and dense fused; eq. R1).
        concepts: the dictionary.
        aliases: the training links (needed by ``alias``; optional for ``fused``).
        encoder: the sentence encoder of ``dense`` and ``fused`` (default MiniLM).
        progress: a progress bar while names are embedded.

    Raises:
        ValueError: for an unknown method, an empty dictionary, a repeated id, or
            ``alias`` without an alias table.
    """
    if method == "tfidf":
        return TfidfGenerator(concepts)
    if method == "bm25":
        return BM25Generator(concepts)
    if method == "dense":
        return DenseGenerator(concepts, encoder, progress=progress)
    if method == "alias":
        if aliases is None:
            raise ValueError("the alias generator needs the training alias table")
        return AliasGenerator(concepts, aliases)
    if method == "fused":
        channels = [
            TfidfGenerator(concepts),
            DenseGenerator(concepts, encoder, progress=progress),
        ]
        alias = AliasGenerator(concepts, aliases) if aliases is not None else None
        return FusedGenerator(concepts, channels, alias)
    raise ValueError(f"unknown candidate method {method!r}; choose from {METHODS}")


@dataclass(frozen=True)
class CandidateStats:
    """How well the generator ranks the gold, over the queries of one split.

    Attributes:
        queries: number of queries.
        recall: ``{k: share of queries whose gold is among the generator's top k}``;
            a gold with score 0 (no evidence at all) is never counted as found.
        accuracy: share whose gold has the strictly highest generator score among its
            final candidates (ties count as wrong): the generator as a ranker.
    """

    queries: int
    recall: dict[int, float]
    accuracy: float

    def to_json(self) -> dict[str, Any]:
        """``{"queries", "recall@k"..., "accuracy@1"}`` rounded to 4 decimals."""
        out: dict[str, Any] = {"queries": self.queries}
        out.update({f"recall@{k}": round(v, 4) for k, v in sorted(self.recall.items())})
        out["accuracy@1"] = round(self.accuracy, 4)
        return out


def make_candidates(
    generator: CandidateGenerator,
    mentions: Sequence[str],
    golds: Sequence[str],
    *,
    num_candidates: int,
    seed: int | Sequence[int],
    synonyms: bool = True,
    docs: Sequence[str] | None = None,
) -> tuple[list[tuple[Candidate, ...]], list[bool], CandidateStats]:
    """Shuffled candidate lists (gold + best C−1 others) and the generator's stats.

    Args:
        generator: from :func:`build_generator`.
        mentions: the query mentions.
        golds: their gold concept ids (or alternative ids), all in the dictionary.
        num_candidates: C, capped at the dictionary's size.
        seed: seeds the filler draws and the shuffles (one RNG, queries in order).
        synonyms: give each candidate its name closest to the mention
            (``Candidate.synonym``); False: preferred names only.
        docs: the document of each mention, for a generator that leaves a query's
            own document out of its alias table (None: documents unknown).

    Returns:
        One tuple of C candidates per query (the gold under its primary id); per query
        whether the generator *retrieved* the gold itself (in its top C with a positive
        score; otherwise the gold was inserted, as a linker in use would never see it);
        and the recall@{1,5,10,64,C} and accuracy@1 of the generator.

    Raises:
        ValueError: when lengths differ, C < 2, the dictionary has fewer than two
            concepts, or a gold is not in the dictionary.
    """
    if len(mentions) != len(golds):
        raise ValueError(f"{len(mentions)} mentions but {len(golds)} gold ids")
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be at least 2, got {num_candidates}")
    n = len(generator.concepts)
    if n < 2:
        raise ValueError(
            f"the dictionary has {n} usable concept; a query needs at least 2 "
            "candidates"
        )
    c = min(num_candidates, n)
    gold_idx = np.empty(len(golds), dtype=np.int64)
    for q, gold in enumerate(golds):
        j = generator.index_of(gold)
        if j is None:
            raise ValueError(f"gold concept {gold!r} is not in the dictionary")
        gold_idx[q] = j
    ks = sorted({k for k in (1, 5, 10, 64) if k <= n} | {c})
    hits = dict.fromkeys(ks, 0)
    correct = 0
    rng = np.random.default_rng(seed)
    out: list[tuple[Candidate, ...]] = []
    retrieved: list[bool] = []
    depth = min(n, max(c, *ks))
    q = 0
    for distinct, by_name, rows in generator._batches(mentions, docs):
        tops = top_k(distinct, depth)  # [u, depth], best first, ties by index
        for r in rows:
            row, top, gi = distinct[r], tops[r], int(gold_idx[q])
            names = by_name[r] if synonyms else None
            q += 1
            hit = np.flatnonzero(top == gi)
            for k in ks:
                hits[k] += bool(hit.size and hit[0] < k and row[gi] > 0)
            retrieved.append(bool(hit.size and hit[0] < c and row[gi] > 0))
            others = [int(j) for j in top[: c + 1] if j != gi and row[j] > 0][: c - 1]
            if len(others) < c - 1:
                others += _fill(rng, n, {gi, *others}, c - 1 - len(others))
            correct += bool(row[gi] > row[others].max())
            chosen = [gi, *others]
            ranks = [_rank(row, j, top) for j in chosen]
            out.append(
                tuple(
                    generator.candidate(chosen[p], names, ranks[p])
                    for p in rng.permutation(c)
                )
            )
    total = max(1, len(golds))
    stats = CandidateStats(
        queries=len(golds),
        recall={k: hits[k] / total for k in ks},
        accuracy=correct / total,
    )
    return out, retrieved, stats


def _rank(row: np.ndarray, j: int, top: np.ndarray) -> int | None:
    """1-based rank of concept ``j`` by the scores ``row``; None without evidence.

    Ties are in index order, as in ``top_k``; ``top`` is the row's ``top_k``. A
    concept with score ≤ 0 has no rank.
    """
    if row[j] <= 0:
        return None
    hit = np.flatnonzero(top == j)
    if hit.size:
        return int(hit[0]) + 1
    return int((row > row[j]).sum() + (row[:j] == row[j]).sum()) + 1


def _fill(rng: np.random.Generator, n: int, taken: set[int], m: int) -> list[int]:
    """``m`` distinct random concept indices in ``range(n)`` not in ``taken``."""
    picked: list[int] = []
    while len(picked) < m:
        j = int(rng.integers(n))
        if j not in taken:
            taken.add(j)
            picked.append(j)
    return picked
