"""Dense retrieval at 30k, 300k and 3M names: build, memory, disk, speed and recall.

::

    nice -n 5 python benchmarks/dense_scale.py --out runs/scale/dense_scale.json \
        --sizes 30000 300000 3000000 --cache runs/scale/cache --keep

Each size runs in its own process (its peak memory is its own), on ``--threads``
threads (torch and faiss). The names: MEDIC's real names (the NCBI-disease dictionary,
76k names, their MiniLM embeddings read from the name cache or embedded once), the
concepts of the NCBI-disease test golds first; beyond 76k, synthetic names, each a
distractor concept whose vector is a real name's plus Gaussian noise of norm
``--noise``, renormalized (cosine ≈ 1/√(1+noise²) to its source). Their matrix goes
through the streamed path (``retrieval/streamed.py``) like a real dictionary's, so
only the vectors are synthetic; the time MiniLM would take to embed them is measured
apart (``embed_names_per_s``) for an honest extrapolation of a real build.

Per size: the HNSW index's build and reload time, the process's peak RSS after it
(before any exact search), the cache's bytes on disk, search speed (queries/s) of the
raw HNSW search, of ``NameIndex.scores`` (what the channel calls) and of exact search,
and on the NCBI-disease dev and test mentions (``tasks/public3-small/ncbi``): how much
of exact search's top 32 names HNSW finds (``overlap@32``), and the recall@32 of the
gold concept (its concept among the first 32 distinct concepts of the name ranking),
exact and HNSW, for each ``--ef`` (HNSW's efSearch: chosen on dev, reported on test).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kfacel.data.readers import read_dictionary
from kfacel.retrieval.ann import IndexKind, IndexSettings
from kfacel.retrieval.dense import DenseGenerator, NameIndex, SentenceEncoder
from kfacel.tasks.directory import read_split

ROOT = Path(__file__).resolve().parents[1]
"""The repository: the datasets lie beside it (``../shared/data``), the tasks in it."""
MEDIC = str(ROOT.parent / "shared/data/ncbi_disease/medic_06Jul2012.txt")
TEST = str(ROOT / "tasks/public3-small/ncbi/test.jsonl")
DEV = str(ROOT / "tasks/public3-small/ncbi/dev.jsonl")
K = 32


class SyntheticEncoder:
    """Names ``"0"``, ``"1"``, …: real vectors first, then noisy copies of them."""

    dim = 384

    def __init__(self, real: np.ndarray, noise: float, seed: int = 0) -> None:
        self.real, self.noise, self.seed = real, noise, seed
        self.key = f"synthetic-{len(real)}-{noise}-{seed}"

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        rows = np.asarray([int(t) for t in texts])
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        real = rows < len(self.real)
        out[real] = self.real[rows[real]]
        fake = np.flatnonzero(~real)
        if fake.size:  # seeded by the block's first row: the same vectors every run
            rng = np.random.default_rng([self.seed, int(rows[fake[0]])])
            src = self.real[rng.integers(0, len(self.real), fake.size)]
            z = rng.standard_normal((fake.size, self.dim), dtype=np.float32)
            v = src + self.noise * z / np.sqrt(self.dim)
            out[fake] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def real_names(encoder: SentenceEncoder) -> tuple[np.ndarray, np.ndarray, dict]:
    """MEDIC's name matrix, reordered gold concepts first; name → concept; gold map."""
    concepts = read_dictionary(MEDIC)
    gen = DenseGenerator(concepts, encoder, settings=IndexSettings(IndexKind.EXACT))
    tests = read_split(Path(TEST))
    golds = {gen.index_of(q.gold) for q in [*tests, *read_split(Path(DEV))]}
    order = sorted(range(len(concepts)), key=lambda j: (j not in golds, j))
    rows, owner = [], []
    for j in order:
        lo, hi = int(gen._starts[j]), int(gen._starts[j + 1])
        rows.extend(range(lo, hi))
        owner.extend([j] * (hi - lo))
    splits = {"dev": read_split(Path(DEV)), "test": tests}
    return gen.index.matrix[rows], np.asarray(owner), {"gen": gen, "splits": splits}


def concept_top(ranked: np.ndarray, owner: np.ndarray, n_real: int) -> list[int]:
    """The first ``K`` distinct concepts of a name ranking (synthetic: own concept)."""
    out: list[int] = []
    for name in ranked:
        c = int(owner[name]) if name < n_real else -1 - int(name)
        if name >= 0 and c not in out:
            out.append(c)
            if len(out) == K:
                break
    return out


def exact_top(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    top = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), 16):
        s = queries[lo : lo + 16] @ matrix.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        top[lo : lo + 16] = np.take_along_axis(part, order, 1)
    return top


def qps(fn, queries: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for lo in range(0, len(queries), batch):
        fn(queries[lo : lo + batch])
    return len(queries) / (time.perf_counter() - start)


def recalls(rankings, gold, owner, n_real) -> float:
    hits = [
        g in concept_top(r, owner, n_real) for r, g in zip(rankings, gold, strict=True)
    ]
    return round(float(np.mean(hits)), 4)


def worker(size: int, noise: float, cache: Path, efs: list[int]) -> dict:
    encoder = SentenceEncoder()
    real, owner, ctx = real_names(encoder)
    n_real = min(size, len(real))
    synth = SyntheticEncoder(real[:n_real], noise)
    names = [str(i) for i in range(size)]
    settings = IndexSettings(kind=IndexKind.HNSW, exact_below=min(size, 1_000_000))
    start = time.perf_counter()
    index = NameIndex.build(synth, names, cache=cache, settings=settings)  # type: ignore[arg-type]
    built_s = time.perf_counter() - start
    start = time.perf_counter()
    NameIndex.build(synth, names, cache=cache, settings=settings)  # type: ignore[arg-type]
    reload_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    disk = sum(p.stat().st_size for p in cache.iterdir()) / 2**30
    gen = ctx["gen"]
    ann = index.approximate
    assert ann is not None
    matrix = index.matrix
    batch = max(1, (1 << 24) // size)  # the channel's batch (retrieval/base.py)
    result: dict = {
        "names": size,
        "real_names": n_real,
        "noise": noise,
        "params": ann.settings.params(),
        "depth": ann.settings.depth,
        "build_s": round(built_s, 1),
        "reload_s": round(reload_s, 1),
        "peak_rss_gib": round(peak, 2),
        "disk_gib": round(disk, 3),
    }
    for split, queries_of in ctx["splits"].items():
        queries = encoder.encode([q.mention for q in queries_of])
        gold = np.asarray([gen.index_of(q.gold) for q in queries_of])
        exact = exact_top(matrix, queries, 2 * ann.settings.depth)
        result[f"{split}_recall@32_exact"] = recalls(exact, gold, owner, n_real)
        if split == "test":
            result["exact_qps"] = round(qps(lambda q: q @ matrix.T, queries, batch), 1)
        for ef in efs:
            ann.index.hnsw.efSearch = ef
            found = ann.search(queries)[1]
            row = f"ef{ef}"
            result[f"{split}_recall@32_hnsw_{row}"] = recalls(
                found, gold, owner, n_real
            )
            overlap = [
                len(set(f[:K]) & set(e[:K])) / K
                for f, e in zip(found, exact, strict=True)
            ]
            result[f"{split}_overlap@32_{row}"] = round(float(np.mean(overlap)), 4)
            if split == "test":
                result[f"hnsw_qps_{row}"] = round(qps(ann.search, queries, 64), 1)
                result[f"hnsw_scores_qps_{row}"] = round(
                    qps(index.scores, queries, batch), 1
                )
    return result


def embed_rate(count: int) -> dict:
    encoder = SentenceEncoder()
    names = [n for c in read_dictionary(MEDIC) for n in c.names]
    pick = np.random.default_rng(0).choice(len(names), count, replace=False)
    start = time.perf_counter()
    encoder.encode([names[i] for i in pick])
    return {
        "embed_names": count,
        "embed_names_per_s": round(count / (time.perf_counter() - start), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[30_000, 300_000, 3_000_000])
    p.add_argument("--noise", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--embed", type=int, default=4096, help="names to time MiniLM on")
    p.add_argument("--ef", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cache", default="runs/scale/cache", help="the sizes' caches")
    p.add_argument("--keep", action="store_true", help="keep each size's cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if args.worker is not None:
        out = (
            embed_rate(args.embed)
            if args.worker == 0
            else worker(args.worker, args.noise, Path(args.cache), args.ef)
        )
        print(json.dumps(out), flush=True)
        return
    results = []
    for size in [0, *args.sizes] if args.embed else args.sizes:
        cache = Path(args.cache) / f"n{size}"
        shutil.rmtree(cache, ignore_errors=True)  # a build, not a reload, is timed
        cache.mkdir(parents=True)
        cmd = [sys.executable, __file__, "--out", args.out, "--worker", str(size)]
        cmd += ["--noise", str(args.noise), "--threads", str(args.threads)]
        cmd += ["--embed", str(args.embed), "--cache", str(cache)]
        cmd += ["--ef", *map(str, args.ef)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
        if done.returncode:
            sys.exit(f"size {size} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
        Path(args.out).write_text(
            json.dumps(results, indent=2) + "\n", encoding="utf-8"
        )


if __name__ == "__main__":
    main()
