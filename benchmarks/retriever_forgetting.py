"""Issue 11: does fine-tuning the retriever on a new task break retrieval for an old one?

Task A's retriever (``prepare --retriever-epochs``: MiniLM aligned on A's dictionary
synonyms and A's training links, saved in A's task directory) is fine-tuned further, as
a continual update would, on task B's dictionary and B's training links (eq. R2, the
same settings), with no protection. A's dense recall@k over A's whole dictionary is
measured on A's test mentions (as written; no abbreviation expansion, the dense channel
alone) for MiniLM as shipped, for A's retriever, and for A's retriever after B. B's own
recall is printed beside it. It prints what it measured; nothing is asserted.

    python benchmarks/retriever_forgetting.py --old tasks/public3-small-links/ncbi \
        --data ../shared/data
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kfacel.data.benchmark import SEED
from kfacel.data.candidates import top_k
from kfacel.data.dense import NameIndex, SentenceEncoder
from kfacel.data.dense_training import RetrieverSettings, fine_tune
from kfacel.data.readers import cadec_concepts, read_cadec, read_dictionary
from kfacel.data.records import Concept
from kfacel.data.tasks import load_task, split_by_document

KS = (1, 5, 32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--old", type=Path, required=True, help="task A, built with a tuned retriever"
    )
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    medic = read_dictionary(args.data / "ncbi_disease" / "medic_06Jul2012.txt")
    old = load_task(args.old).test
    mentions = list(read_cadec(args.data / "cadec" / "CADEC.json"))
    train_b, _, test_b = split_by_document(mentions, (0.7, 0.1, 0.2), seed=SEED)
    concepts_b = cadec_concepts(mentions)
    links_b = [
        (m.surface, m.concept_ids[0]) for m in train_b if len(m.concept_ids) == 1
    ]
    test_b_pairs = [
        (m.surface, m.concept_ids[0]) for m in test_b if len(m.concept_ids) == 1
    ]

    after = SentenceEncoder(args.old / "retriever")
    start = time.perf_counter()
    done = fine_tune(after, concepts_b, RetrieverSettings(epochs=1), mentions=links_b)
    print(
        f"fine-tuned A's retriever on B (cadec): {done}, {time.perf_counter() - start:.0f} s"
    )
    encoders = {
        "MiniLM as shipped": SentenceEncoder(),
        "A's retriever": SentenceEncoder(args.old / "retriever"),
        "A's retriever, then B (no protection)": after,
    }
    print(
        f"| encoder | A (ncbi) r@{'/'.join(map(str, KS))} | B (cadec) r@{'/'.join(map(str, KS))} |"
    )
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for label, encoder in encoders.items():
            a = recall(encoder, medic, [(q.mention, q.gold) for q in old], Path(cache))
            b = recall(encoder, concepts_b, test_b_pairs, Path(cache))
            print(f"| {label} | {fmt(a)} | {fmt(b)} |")


def recall(
    encoder: SentenceEncoder,
    concepts: list[Concept],
    queries: list[tuple[str, str]],
    cache: Path,
) -> dict[int, float]:
    """Dense recall@k of concept-level retrieval (a concept's best name scores it)."""
    names = [n for c in concepts for n in c.names]  # each concept's names together
    starts = np.cumsum([0] + [len(c.names) for c in concepts[:-1]])
    index = NameIndex.build(encoder, names, cache=cache)
    found = dict.fromkeys(KS, 0)
    for lo in range(0, len(queries), 256):
        part = queries[lo : lo + 256]
        by_name = index.scores(encoder.encode([m for m, _ in part]))  # [b, names]
        scores = np.maximum.reduceat(by_name, starts, axis=1)  # [b, concepts]
        for row, (_, gold) in zip(top_k(scores, max(KS)), part, strict=True):
            rank = next((r for r, j in enumerate(row) if concepts[j].id == gold), None)
            for k in KS:
                found[k] += rank is not None and rank < k
    return {k: found[k] / len(queries) for k in KS}


def fmt(r: dict[int, float]) -> str:
    return " / ".join(f"{r[k]:.3f}" for k in KS)


if __name__ == "__main__":
    main()
