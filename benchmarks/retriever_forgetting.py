"""Does the retriever's update on a new task break retrieval on an old one?

And does KFC on the retriever prevent it? Task A's retriever (``prepare
--retriever-epochs``: MiniLM aligned on A's dictionary synonyms and A's training links,
saved in A's task directory) is consolidated (K-FAC of eq. R2's pair classifier on A's
groups, ``retrieval.continual``), then fine-tuned on task B
(CADEC: its MedDRA terms and training links, eq. R2) as ``prepare --retriever-init``
does: with no penalty, and with KFC at λ ∈ {0.1, 1, 10} × λ*, where λ* = 2 / q and q is
the unprotected update's displacement in A's Fisher norm, ``(θ_B − θ_A)ᵀ F_A (θ_B − θ_A)``
(the λ at which the penalty of that displacement equals 1 nat; it reads A's state only,
never A's data). Dense recall@k over the whole dictionary is measured on A's test
mentions (as written, the dense channel alone) and on B's. It prints what it measured;
nothing is asserted.

    python benchmarks/retriever_forgetting.py --old tasks/public3-small-asread/ncbi \
        --data ../shared/data --b-epochs 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from kfacel.consolidation import save_state
from kfacel.data.readers import cadec_concepts, read_cadec, read_dictionary
from kfacel.data.records import Concept
from kfacel.penalties import build_penalty
from kfacel.retrieval.continual import consolidate_retriever, retriever_start
from kfacel.retrieval.dense import DenseGenerator, SentenceEncoder
from kfacel.retrieval.finetune import (
    PairScorer,
    RetrieverSettings,
    fine_tune,
    training_groups,
)
from kfacel.tasks.benchmark import split_cadec
from kfacel.tasks.directory import (
    RETRIEVER_GROUPS_FILE,
    load_task,
    recorded_settings,
    retriever_groups,
)

KS = (1, 5, 32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--old", type=Path, required=True, help="task A, built with a tuned retriever"
    )
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--b-epochs", type=int, default=10, help="epochs of eq. R2 on B")
    p.add_argument("--steps", type=int, default=32, help="batches of A's Fisher")
    p.add_argument("--factors", default="0.1,1,10", help="λ as multiples of λ*")
    p.add_argument("--b-seed", type=int, default=0, help="seeds B's batches")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    medic = read_dictionary(args.data / "ncbi_disease" / "medic_06Jul2012.txt")
    task_a = load_task(args.old)
    assert task_a.retriever is not None, f"{args.old} has no fine-tuned retriever"
    settings_a = recorded_settings(task_a)
    if (task_a.path / RETRIEVER_GROUPS_FILE).is_file():
        groups_a = retriever_groups(task_a)
    else:  # a task built before the groups were written: the same groups again
        links = json.loads((task_a.path / "aliases.json").read_text())["links"]
        pairs = [(mention, cid) for _, mention, cid in links]
        groups_a = training_groups(medic, settings_a, pairs)
    mentions = list(read_cadec(args.data / "cadec" / "CADEC.json"))
    train_b, _, test_b = split_cadec(mentions)
    concepts_b = cadec_concepts(mentions)
    links_b = [
        (m.surface, m.concept_ids[0]) for m in train_b if len(m.concept_ids) == 1
    ]
    test_a = [(q.mention, q.gold) for q in task_a.test]
    test_b = [(m.surface, m.concept_ids[0]) for m in test_b if len(m.concept_ids) == 1]

    work = Path(tempfile.mkdtemp(prefix="retriever-forgetting-"))
    os.environ["KFACEL_CACHE_DIR"] = str(work / "cache")  # these encoders' names only
    checkpoint = work / "a"
    shutil.copytree(task_a.retriever, checkpoint)
    start = time.perf_counter()
    state = consolidate_retriever(
        SentenceEncoder(checkpoint), groups_a, settings_a, task=task_a.name,
        max_steps=args.steps,
    )  # fmt: skip
    save_state(checkpoint, state)
    print(
        f"A ({task_a.name}): {len(groups_a)} groups; K-FAC of the retriever on "
        f"{state.meta['examples_used']} names in {time.perf_counter() - start:.0f} s, "
        f"state {state.nbytes() / 2**20:.1f} MiB"
    )
    quad = build_penalty("kfac", [state], [2.0])  # (θ − θ_A)ᵀ F_A (θ − θ_A)

    def displacement(encoder: SentenceEncoder) -> float:
        with torch.no_grad():
            return float(quad(PairScorer(encoder.model, 1.0)))

    def update(lam: float | None) -> tuple[SentenceEncoder, dict, float]:
        encoder = SentenceEncoder(checkpoint)
        how = RetrieverSettings(
            epochs=args.b_epochs,
            seed=args.b_seed,
            start=retriever_start(checkpoint, lam=lam),
        )
        t = time.perf_counter()
        done = fine_tune(encoder, concepts_b, how, mentions=links_b)
        return encoder, done, time.perf_counter() - t

    rows = [
        ("MiniLM as shipped", SentenceEncoder(), None),
        (f"A's retriever ({task_a.name})", SentenceEncoder(checkpoint), None),
    ]
    free, done, seconds = update(None)
    q = displacement(free)
    lam_star = 2.0 / q
    print(
        f"B, no penalty: {done}, {seconds:.0f} s; displacement q = {q:.3g}, λ* = {lam_star:.3g}"
    )
    rows.append(("A's, then B: no penalty", free, done))
    for factor in (float(f) for f in args.factors.split(",")):
        lam = factor * lam_star
        held, done, seconds = update(lam)
        print(f"B, KFC λ = {lam:.3g} ({factor:g} λ*): {done}, {seconds:.0f} s")
        rows.append((f"A's, then B: KFC λ = {lam:.3g} ({factor:g} λ*)", held, done))

    ks = "/".join(map(str, KS))
    print(
        f"| encoder | A ({task_a.name}) r@{ks} | B (cadec) r@{ks} | q | B's loss last |"
    )
    print("|---|---|---|---:|---:|")
    for label, encoder, done in rows:
        a = recall(encoder, medic, test_a)
        b = recall(encoder, concepts_b, test_b)
        loss = f"{done['loss_last']:.3f}" if done else "–"
        print(
            f"| {label} | {fmt(a)} | {fmt(b)} | {displacement(encoder):.3g} | {loss} |"
        )
    shutil.rmtree(work)


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
