"""Splitting mentions into a task's parts: whole documents per part, seeded samples.

A corpus without an official split is split by document (:func:`split_by_document`),
so no document's mentions reach two splits; a split may then be capped to a number or
a share of its usable mentions (:func:`sample_mentions`; ``TaskSettings.max_queries``,
as the benchmark's CPU variant caps its splits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kfacel.data.records import Mention


def split_by_document(
    mentions: Sequence[Mention], fractions: Sequence[float], seed: int
) -> list[list[Mention]]:
    """Split mentions into parts by document, the documents shuffled with ``seed``.

    Args:
        mentions: mentions of any number of documents.
        fractions: one share of documents per part, summing to 1.
        seed: seeds the shuffle of the sorted document ids.

    Returns:
        One list per fraction, mentions in their input order.
    """
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be non-negative and sum to 1: {fractions}"
        )
    docs = sorted({m.doc_id for m in mentions})
    order = [docs[i] for i in np.random.default_rng(seed).permutation(len(docs))]
    bounds = np.round(np.cumsum([0.0, *fractions]) * len(docs)).astype(int)
    part = {
        d: p for p in range(len(fractions)) for d in order[bounds[p] : bounds[p + 1]]
    }
    out: list[list[Mention]] = [[] for _ in fractions]
    for m in mentions:
        out[part[m.doc_id]].append(m)
    return out


def sample_mentions(
    items: list[Mention], limit: float | None, seed: list[int]
) -> list[Mention]:
    """At most ``limit`` items (a share if a float), chosen with ``seed``, in order."""
    if limit is None:
        return items
    n = int(len(items) * limit) if isinstance(limit, float) else int(limit)
    if n >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]
