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
import os
import tempfile
import time
from pathlib import Path

import torch

from kfacel.data.benchmark import split_cadec
from kfacel.data.candidates import DenseGenerator
from kfacel.data.dense import SentenceEncoder
from kfacel.data.dense_training import RetrieverSettings, fine_tune
from kfacel.data.readers import cadec_concepts, read_cadec, read_dictionary
from kfacel.data.records import Concept
from kfacel.data.tasks import load_task

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
    train_b, _, test_b = split_cadec(mentions)
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
        os.environ["KFACEL_CACHE_DIR"] = cache  # name matrices of these encoders only
        for label, encoder in encoders.items():
            a = recall(encoder, medic, [(q.mention, q.gold) for q in old])
            b = recall(encoder, concepts_b, test_b_pairs)
            print(f"| {label} | {fmt(a)} | {fmt(b)} |")


def recall(
    encoder: SentenceEncoder, concepts: list[Concept], queries: list[tuple[str, str]]
) -> dict[int, float]:
    """Dense recall@k over the whole dictionary (the dense channel, ``DenseGenerator``)."""
    found = dict.fromkeys(KS, 0)
    ranked = DenseGenerator(concepts, encoder).search([m for m, _ in queries], max(KS))
    for (_, gold), candidates in zip(queries, ranked, strict=True):
        ids = [c.id for c, _ in candidates]
        for k in KS:
            found[k] += gold in ids[:k]
    return {k: found[k] / len(queries) for k in KS}


def fmt(r: dict[int, float]) -> str:
    return " / ".join(f"{r[k]:.3f}" for k in KS)


if __name__ == "__main__":
    main()
