"""What bounds ``link``'s retrieval on a large dictionary: each channel's mentions/s.

::

    nice -n 5 python benchmarks/fused_scale.py --names 300000 --dense
    nice -n 5 python benchmarks/fused_scale.py --names 3000000 --dense --threads 2

The dictionary: MEDIC scaled to ``--names`` names by ``benchmarks/scaled_dictionary.py``
(MEDIC, then variant concepts with every name rewritten). The mentions: the first
``--mentions`` NCBI-disease test mentions (``tasks/public3-small/ncbi``), as written.
It times ``search(mentions, 64)`` (what ``link`` asks of its generator; the fusion's
depth) of the TF-IDF channel and, with ``--dense``, of the dense channel (an HNSW index
over synthetic name vectors: MEDIC's real MiniLM vectors for its names, noisy copies
of them for the variants, as in ``dense_scale.py``; the mentions embedded by MiniLM)
and of their fusion, on ``--threads`` threads, and the process's peak RSS. ``link``
adds the ranker's cost (the CNN: ``docs/results.md``, "The linker in use").
From a million names TF-IDF searches impact-ordered postings; the run then also gives
the exact product's speed, recall@32 and the share of identical top-64 rankings beside
them. With ``--dense`` it also gives the recall@32 of the gold (NCBI-disease dev and test
mentions) of the dense channel and of the fusion, with HNSW and with exact search.
With ``--model`` (a linker directory) it also times ``link`` (retrieval and
ranker) over the fusion, each mention in its context window. ``--speed-only`` skips
every recall pass (minutes, with a cached index);
``--out F`` writes the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dense_scale import DEV, MEDIC, TEST, SyntheticEncoder
from kfacel.data.readers import read_dictionary
from kfacel.data.records import Concept, LinkingExample
from kfacel.retrieval.ann import IndexKind, IndexSettings
from kfacel.retrieval.base import CandidateGenerator
from kfacel.retrieval.dense import DenseGenerator, SentenceEncoder
from kfacel.retrieval.fusion import FusedGenerator
from kfacel.retrieval.tfidf import TfidfGenerator
from kfacel.tasks.directory import ranker_reads_retrieval_text, read_split
from scaled_dictionary import _medic, scaled


class HybridEncoder:
    """Dictionary names: synthetic vectors by position; anything else: MiniLM."""

    dim = 384

    def __init__(self, names: Sequence[str], real: np.ndarray, noise: float) -> None:
        self.rows = {n: i for i, n in enumerate(names)}
        self.synthetic = SyntheticEncoder(real, noise)
        self.minilm = SentenceEncoder()
        self.key = f"hybrid-{len(names)}-{self.synthetic.key}"

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        rows = [self.rows.get(t) for t in texts]
        if all(r is not None for r in rows):
            return self.synthetic.encode([str(r) for r in rows])
        return self.minilm.encode(texts)


def rate(generator: CandidateGenerator, mentions: list[str]) -> float:
    start = time.perf_counter()
    generator.search(mentions, 64)
    return round(len(mentions) / (time.perf_counter() - start), 1)


def recall_at_32(generator: CandidateGenerator, split: list[LinkingExample]) -> float:
    """Share of ``split``'s mentions whose gold is among the generator's top 32."""
    found = generator.search([q.mention for q in split], 32)
    hits = [
        generator.index_of(q.gold) in {generator.index_of(c.id) for c, _ in got}
        for q, got in zip(split, found, strict=True)
    ]
    return round(float(np.mean(hits)), 4)


def exact_tfidf(
    concepts: list[Concept],
    approximate: TfidfGenerator,
    test: list[LinkingExample],
    dev: list[LinkingExample],
) -> dict:
    """The exact product's speed and recall beside the impact-ordered postings'."""
    exact = TfidfGenerator(concepts, settings=IndexSettings(kind=IndexKind.EXACT))
    mentions = [q.mention for q in test]
    out: dict = {"tfidf_exact_mentions_per_s": rate(exact, mentions[:400])}
    same = [
        [c.id for c, _ in a] == [c.id for c, _ in b]
        for a, b in zip(
            exact.search(mentions, 64), approximate.search(mentions, 64), strict=True
        )
    ]
    out["tfidf_identical_top64_test"] = round(float(np.mean(same)), 4)
    for name, split in (("dev", dev), ("test", test)):
        out[f"{name}_recall@32_tfidf_exact"] = recall_at_32(exact, split)
        out[f"{name}_recall@32_tfidf_impact"] = recall_at_32(approximate, split)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=int, required=True)
    p.add_argument("--mentions", type=int, default=400)
    p.add_argument("--dense", action="store_true")
    p.add_argument("--noise", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default="runs/scale/cache-fused")
    p.add_argument(
        "--speed-only", action="store_true", help="mentions/s alone: no recall passes"
    )
    p.add_argument("--out", type=Path, help="also write the last JSON line here")
    p.add_argument(
        "--model", type=Path, help="a linker: also time `link` over the fusion"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = scaled(_medic(Path(MEDIC)), set(), args.names)
    concepts = [Concept(cid, tuple(ns)) for cid, ns in rows]
    tests = read_split(Path(TEST))
    mentions = [q.mention for q in tests][: args.mentions]
    out: dict = {"names": sum(len(ns) for _, ns in rows), "concepts": len(concepts)}
    start = time.perf_counter()
    tfidf = TfidfGenerator(concepts)
    out["tfidf_fit_s"] = round(time.perf_counter() - start, 1)
    out["tfidf_approximate"] = tfidf.approximate
    out["tfidf_mentions_per_s"] = rate(tfidf, mentions)
    if tfidf.approximate and not args.speed_only:  # against the exact product
        out |= exact_tfidf(concepts, tfidf, tests, read_split(Path(DEV)))
    print(json.dumps(out), flush=True)
    if args.dense:
        real = DenseGenerator(read_dictionary(MEDIC)).index.matrix
        os.environ["KFACEL_CACHE_DIR"] = args.cache  # the big index is not the user's
        encoder = HybridEncoder(tfidf._originals, real, args.noise)
        start = time.perf_counter()
        settings = IndexSettings(  # streamed and HNSW at any size
            kind=IndexKind.HNSW, exact_below=len(tfidf._originals)
        )
        dense = DenseGenerator(concepts, encoder, settings=settings)  # type: ignore[arg-type]
        out["dense_build_s"] = round(time.perf_counter() - start, 1)
        out["dense_mentions_per_s"] = rate(dense, mentions)
        fused = FusedGenerator(concepts, [tfidf, dense])
        out["fused_mentions_per_s"] = rate(fused, mentions)
        if args.model is not None:
            out |= link_rate(args.model, fused, tests[: args.mentions])
        if not args.speed_only:
            out |= dense_recalls(concepts, encoder, settings, tfidf, dense, tests)
    out["peak_rss_gib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
    )
    print(json.dumps(out), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


def link_rate(model: Path, fused: FusedGenerator, tests: list[LinkingExample]) -> dict:
    """``link``'s mentions/s (retrieval and ranker) over ``fused``, each in its window."""
    from kfacel.linking.link import link
    from kfacel.linking.linker import load_linker
    from retrieval_speed import _query

    linker = load_linker(model)
    info = linker.meta["task"]
    k, candidates = int(info["context_words"]), info["candidates"]
    queries = [_query(q, None, k) for q in tests]
    start = time.perf_counter()
    ranked = link(
        linker, fused, queries, num_candidates=int(candidates["num_candidates"]),
        context_words=k, synonyms=bool(candidates.get("synonyms", False)),
        as_retrieved=ranker_reads_retrieval_text(candidates),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    right = sum(
        bool(r) and r[0].id == q.gold for r, q in zip(ranked, tests, strict=True)
    )
    return {
        "link_mentions_per_s": round(len(queries) / seconds, 1),
        "link_accuracy": round(right / len(tests), 4),
    }


def dense_recalls(
    concepts: list[Concept],
    encoder: HybridEncoder,
    settings: IndexSettings,
    tfidf: TfidfGenerator,
    dense: DenseGenerator,
    tests: list[LinkingExample],
) -> dict:
    """Recall@32 of the dense channel and the fusion, HNSW against exact search."""
    out: dict = {}
    fused = FusedGenerator(concepts, [tfidf, dense])
    exact = DenseGenerator(
        concepts,
        encoder,  # type: ignore[arg-type]
        settings=replace(settings, kind=IndexKind.EXACT),
    )
    fused_exact = FusedGenerator(concepts, [tfidf, exact])
    for name, split in (("dev", read_split(Path(DEV))), ("test", tests)):
        for label, gen in (
            ("dense_hnsw", dense),
            ("dense_exact", exact),
            ("fused_hnsw", fused),
            ("fused_exact", fused_exact),
        ):
            out[f"{name}_recall@32_{label}"] = recall_at_32(gen, split)
        print(json.dumps(out | {"split_done": name}), flush=True)
    return out


if __name__ == "__main__":
    main()
