"""How deep TF-IDF's impact-ordered postings are kept and read, chosen on dev.

::

    python benchmarks/tfidf_postings.py --names 3000000
    python benchmarks/tfidf_postings.py --names 3000000 --postings 50000 \
        --budget 50000 100000 150000 --rescored 4000 8000 16000

The dictionary: MEDIC scaled to ``--names`` names (``benchmarks/scaled_dictionary.py``).
The queries: NCBI-disease dev mentions (``tasks/public3-small/ncbi``), never test. For
each ``postings`` (names a 3-gram keeps) × ``budget`` (postings a mention reads) ×
``rescored`` (names scored exactly) it prints, as one JSON line, the recall@32 of the gold
against the exact product's, the share of mentions whose top 64 is the exact one, and
mentions/s on one thread. The exact product is fitted once; the truncated postings are
cut from it, so every row searches the same vectors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dense_scale import DEV, MEDIC
from kfacel.data.records import Concept
from kfacel.retrieval.ann import IndexKind, IndexSettings
from kfacel.retrieval.tfidf import BUDGET, ImpactLayers, TfidfGenerator
from kfacel.tasks.directory import read_split
from scaled_dictionary import _medic, scaled


def recall_at_32(generator: TfidfGenerator, found: list, golds: list[str]) -> float:
    hits = [
        generator.index_of(gold) in {generator.index_of(c.id) for c, _ in got[:32]}
        for gold, got in zip(golds, found, strict=True)
    ]
    return round(float(np.mean(hits)), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=int, default=3_000_000)
    p.add_argument("--postings", type=int, nargs="+", default=[30_000, 50_000, 80_000])
    p.add_argument("--budget", type=int, nargs="+", default=[BUDGET])
    p.add_argument("--rescored", type=int, nargs="+", default=[4_000, 8_000])
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = scaled(_medic(Path(MEDIC)), set(), args.names)
    exact = TfidfGenerator(
        [Concept(cid, tuple(ns)) for cid, ns in rows],
        settings=IndexSettings(kind=IndexKind.EXACT),
    )
    dev = read_split(Path(DEV))
    mentions, golds = [q.mention for q in dev], [q.gold for q in dev]
    want = exact.search(mentions, 64)
    print(json.dumps({"exact_dev_recall@32": recall_at_32(exact, want, golds)}))
    cut = exact  # the same fitted vectors, searched on truncated postings
    full = exact._matrix_t
    cut._vectors, cut.approximate = full.T.tocsr(), True
    for postings in args.postings:
        cut._layers = ImpactLayers.build(full, postings)
        for budget in args.budget:
            for rescored in args.rescored:
                cut.budget, cut.rescored = budget, rescored
                row = {"postings": postings} | setting(cut, mentions, golds, want)
                print(json.dumps(row), flush=True)


def setting(
    cut: TfidfGenerator, mentions: list[str], golds: list[str], want: list
) -> dict:
    """Recall@32, identical top 64 and mentions/s of the search as ``cut`` is set."""
    start = time.perf_counter()
    got = cut.search(mentions, 64)
    seconds = time.perf_counter() - start
    same = [
        [c.id for c, _ in a] == [c.id for c, _ in b]
        for a, b in zip(got, want, strict=True)
    ]
    return {
        "budget": cut.budget,
        "rescored": cut.rescored,
        "dev_recall@32": recall_at_32(cut, got, golds),
        "identical_top64": round(float(np.mean(same)), 4),
        "mentions_per_s": round(len(mentions) / seconds, 1),
    }


if __name__ == "__main__":
    main()
