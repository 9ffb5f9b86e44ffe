"""Candidate lists of a task: the gold and the C−1 best other concepts, shuffled.

``make_candidates`` asks a channel (any :class:`~kfacel.retrieval.base.CandidateGenerator`)
for its ranking of each query's mention and keeps the gold plus the C−1 best other
concepts with a positive score; when fewer than C−1 others have one, the remaining
places are drawn at random (seeded) from the zero-score concepts, so that filler
candidates are not always the dictionary's first entries. The list is then shuffled
with the same RNG. Along the way it measures the channel: recall@k of the gold and
accuracy@1 of the channel as a ranker (:class:`CandidateStats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfacel.data.records import Candidate
from kfacel.retrieval.base import CandidateGenerator, top_k


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


@dataclass
class _Tally:
    """The counts behind :class:`CandidateStats`, query by query."""

    ks: list[int]
    hits: dict[int, int] = field(default_factory=dict)
    correct: int = 0

    @classmethod
    def over(cls, n: int, c: int) -> _Tally:
        """Recall at 1, 5, 10 and 64 (those within ``n`` concepts) and at C."""
        ks = sorted({k for k in (1, 5, 10, 64) if k <= n} | {c})
        return cls(ks, dict.fromkeys(ks, 0))

    def add(
        self, row: np.ndarray, gold_at: int | None, gi: int, others: list[int]
    ) -> None:
        """One query: its scores, the gold's place in its ranking, its other picks."""
        for k in self.ks:
            self.hits[k] += gold_at is not None and gold_at < k
        self.correct += bool(row[gi] > row[others].max())

    def stats(self, queries: int) -> CandidateStats:
        """The shares over ``queries`` queries."""
        total = max(1, queries)
        return CandidateStats(
            queries=queries,
            recall={k: self.hits[k] / total for k in self.ks},
            accuracy=self.correct / total,
        )


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
        generator: a channel (``retrieval.methods.build_generator``).
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
    c = _capped_size(generator, mentions, golds, num_candidates)
    gold_idx = _gold_indices(generator, golds)
    n = len(generator.concepts)
    tally = _Tally.over(n, c)
    rng = np.random.default_rng(seed)
    out: list[tuple[Candidate, ...]] = []
    retrieved: list[bool] = []
    depth = min(n, max(c, *tally.ks))
    q = 0
    for distinct, by_name, rows in generator._batches(mentions, docs):
        tops = top_k(distinct, depth)  # [u, depth], best first, ties by index
        for r in rows:
            row, top, gi = distinct[r], tops[r], int(gold_idx[q])
            q += 1
            gold_at = _gold_place(row, top, gi)
            retrieved.append(gold_at is not None and gold_at < c)
            others = _others(row, top, gi, c, rng)
            tally.add(row, gold_at, gi, others)
            names = by_name[r] if synonyms else None
            chosen = [gi, *others]
            out.append(_shuffled(generator, row, top, chosen, names, rng))
    return out, retrieved, tally.stats(len(golds))


def _capped_size(
    generator: CandidateGenerator,
    mentions: Sequence[str],
    golds: Sequence[str],
    num_candidates: int,
) -> int:
    """C capped at the dictionary's size, after checking the sizes asked for."""
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
    return min(num_candidates, n)


def _gold_indices(generator: CandidateGenerator, golds: Sequence[str]) -> np.ndarray:
    """The dictionary position of each gold id; an unknown id is an error."""
    gold_idx = np.empty(len(golds), dtype=np.int64)
    for q, gold in enumerate(golds):
        j = generator.index_of(gold)
        if j is None:
            raise ValueError(f"gold concept {gold!r} is not in the dictionary")
        gold_idx[q] = j
    return gold_idx


def _gold_place(row: np.ndarray, top: np.ndarray, gi: int) -> int | None:
    """0-based place of the gold ``gi`` in ``top``; None: not there, or score ≤ 0."""
    hit = np.flatnonzero(top == gi)
    return int(hit[0]) if hit.size and row[gi] > 0 else None


def _others(
    row: np.ndarray, top: np.ndarray, gi: int, c: int, rng: np.random.Generator
) -> list[int]:
    """The C−1 best other concepts with a positive score, filled up at random."""
    others = [int(j) for j in top[: c + 1] if j != gi and row[j] > 0][: c - 1]
    if len(others) < c - 1:
        others += _fill(rng, len(row), {gi, *others}, c - 1 - len(others))
    return others


def _shuffled(
    generator: CandidateGenerator,
    row: np.ndarray,
    top: np.ndarray,
    chosen: list[int],
    names: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[Candidate, ...]:
    """The ``chosen`` concepts as candidates, in an order drawn with ``rng``."""
    ranks = [_rank(row, j, top) for j in chosen]
    return tuple(
        generator.candidate(
            chosen[p], generator.closest_name(chosen[p], names), ranks[p]
        )
        for p in rng.permutation(len(chosen))
    )


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
