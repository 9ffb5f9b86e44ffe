"""Choose postings/rescored on NCBI dev (3M names): recall@32 against exact, speed."""
import sys, time, json
from pathlib import Path
import numpy as np
sys.path.insert(0, "benchmarks")
from dense_scale import MEDIC, DEV
from scaled_dictionary import _medic, scaled
from kfacel.data.records import Concept
from kfacel.retrieval.ann import IndexKind, IndexSettings
from kfacel.retrieval.tfidf import TfidfGenerator, _impact_ordered
from kfacel.tasks.directory import read_split
import torch; torch.set_num_threads(1)
rows = scaled(_medic(Path(MEDIC)), set(), 3_000_000)
g = TfidfGenerator([Concept(c, tuple(n)) for c, n in rows], settings=IndexSettings(kind=IndexKind.EXACT))
dev = read_split(Path(DEV)); ments = [q.mention for q in dev]
gold = [g.index_of(q.gold) for q in dev]
def rec(found): return round(float(np.mean([gi in {g.index_of(c.id) for c, _ in f[:32]} for gi, f in zip(gold, found)])), 4)
exact = g.search(ments, 64)
print(json.dumps({"exact_dev_recall@32": rec(exact)}), flush=True)
full = g._matrix_t
g._vectors = full.T.tocsr(); g.approximate = True
for L in (30000, 50000, 80000):
    g._postings = _impact_ordered(full, L)
    for R in (4000, 8000):
        g.rescored = R
        t = time.perf_counter(); found = g.search(ments, 64); dt = time.perf_counter() - t
        same = float(np.mean([[c.id for c, _ in a] == [c.id for c, _ in b] for a, b in zip(found, exact)]))
        print(json.dumps({"postings": L, "rescored": R, "dev_recall@32": rec(found), "identical_top64": round(same, 4), "mentions_per_s": round(len(ments) / dt, 1)}), flush=True)
