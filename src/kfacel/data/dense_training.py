"""Fine-tuning the dense retriever on a dictionary's synonyms and a task's training links.

Self-alignment (Liu et al., "Self-Alignment Pretraining for Biomedical Entity
Representations", NAACL 2021): the names of one concept should embed close together and
away from other concepts' names. Each step draws ``B`` concepts with at least two names
and two distinct names of each, embeds the ``2B`` names with the sentence encoder, and
minimizes the supervised contrastive loss over the batch (eq. R2)

    L = −(1/2B) Σ_i log( Σ_{j ∈ P(i)} e^{s_ij/τ} / Σ_{j ≠ i} e^{s_ij/τ} )

where ``s_ij`` is the cosine similarity, ``P(i)`` the other names of ``i``'s concept in
the batch and τ the temperature: every other concept in the batch is a negative, and the
softmax weighs the hardest most. Batches hold look-alike concepts (hard negatives):
concepts whose first names share their first three characters are kept together, the
groups and their members in a seeded shuffle, so ``"breast cancer"`` meets
``"breast cyst"`` in a batch rather than random strangers.

The task's training mentions join their gold concept's group (``mentions``: BioSyn
and SapBERT's fine-tuned variants learn from the task's mention → concept pairs), so
"heart attack" as written in the training split is pulled toward the concept's names.
Only training mentions: dev and test never reach the retriever. The retriever is then a
function of the dictionary, the training split, the base encoder and the settings
(seeded, deterministic on the CPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kfacel._progress import with_progress
from kfacel.data.dense import SentenceEncoder
from kfacel.data.records import Concept

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieverSettings:
    """How the dense retriever is fine-tuned (recorded in ``task.json``).

    Attributes:
        epochs: passes over the concepts that have at least two names (0: none).
        batch_concepts: concepts per batch (two names each).
        lr: AdamW learning rate.
        temperature: τ of eq. R2.
        seed: seeds the batches.
        mentions: add the task's training mentions to their gold concept's group.
    """

    epochs: int = 1
    batch_concepts: int = 64
    lr: float = 2e-5
    temperature: float = 0.05
    seed: int = 0
    mentions: bool = True

    def to_json(self) -> dict[str, float | int]:
        """The settings as a JSON object."""
        return {
            "epochs": self.epochs,
            "batch_concepts": self.batch_concepts,
            "lr": self.lr,
            "temperature": self.temperature,
            "seed": self.seed,
            "mentions": self.mentions,
        }


def synonym_groups(
    concepts: Sequence[Concept], mentions: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, ...]]:
    """The distinct texts (case-insensitive) of each concept that has at least two.

    A concept's texts are its names, then the ``mentions`` (``(text, concept id)``
    pairs, the training links) of it that are not already among them.
    """
    linked: dict[str, list[str]] = {}
    for text, concept_id in mentions:
        linked.setdefault(concept_id, []).append(text)
    groups = []
    for concept in concepts:
        texts = (*concept.names, *linked.get(concept.id, ()))
        names = tuple({n.lower(): n for n in reversed(texts)}.values())[::-1]
        if len(names) >= 2:
            groups.append(names)
    return groups


def contrastive_loss(
    emb: torch.Tensor, labels: torch.Tensor, tau: float
) -> torch.Tensor:
    """Eq. R2 over unit rows ``emb [n, d]`` with concept ``labels [n]``."""
    sim = emb @ emb.T / tau
    self_mask = torch.eye(len(labels), dtype=torch.bool)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    log_all = torch.logsumexp(sim, dim=1)
    log_pos = torch.logsumexp(sim.masked_fill(~positive, float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def fine_tune(
    encoder: SentenceEncoder,
    concepts: Sequence[Concept],
    settings: RetrieverSettings,
    *,
    mentions: Sequence[tuple[str, str]] = (),
    progress: bool = False,
) -> dict[str, float | int]:
    """Fine-tune ``encoder`` in place on the synonyms of ``concepts`` (eq. R2).

    Args:
        encoder: the sentence encoder, changed in place.
        concepts: the dictionary.
        settings: epochs, batch, learning rate, temperature, seed, ``mentions``.
        mentions: ``(text, concept id)`` training links, used when
            ``settings.mentions``; never dev or test mentions.
        progress: a progress bar.

    Returns:
        What was done: concepts with synonyms, training links used, steps, and the
        mean loss of the first and last tenth of the steps (the wall time is logged,
        not returned, so that ``task.json`` stays byte-identical between runs).

    Raises:
        ValueError: when fewer than two concepts have two names (nothing to align).
    """
    links = list(mentions) if settings.mentions else []
    groups = synonym_groups(concepts, links)
    if len(groups) < 2:
        raise ValueError(
            f"retriever fine-tuning needs concepts with synonyms; {len(groups)} of "
            f"{len(concepts)} concepts have two names or more (training links "
            "included)"
        )
    rng = np.random.default_rng(settings.seed)
    ids = [encoder.token_ids(g) for g in groups]
    order = _lookalike_order(groups, rng)
    model = encoder.model
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    b = max(2, settings.batch_concepts)
    steps = [
        order[lo : lo + b]
        for _ in range(settings.epochs)
        for lo in range(0, len(order), b)
        if len(order[lo : lo + b]) >= 2
    ]
    losses = []
    start = time.perf_counter()
    model.train()
    try:
        for batch in with_progress(steps, enabled=progress, desc="align synonyms"):
            rows, labels = [], []
            for k, g in enumerate(batch):
                pick = rng.choice(len(ids[g]), 2, replace=False)
                rows += [ids[g][int(pick[0])], ids[g][int(pick[1])]]
                labels += [k, k]
            loss = contrastive_loss(
                encoder.embed(rows), torch.tensor(labels), settings.temperature
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    finally:
        model.eval()
        encoder.key = encoder.compute_key()  # the cache must not serve the old weights
    tenth = max(1, len(losses) // 10)
    logger.info(
        "aligned the synonyms of %d concepts in %d steps, %.1f s",
        len(groups), len(losses), time.perf_counter() - start,
    )  # fmt: skip
    return {
        "concepts_with_synonyms": len(groups),
        "training_links": len(links),
        "steps": len(losses),
        "loss_first": round(float(np.mean(losses[:tenth])), 3),
        "loss_last": round(float(np.mean(losses[-tenth:])), 3),
    }


def _lookalike_order(
    groups: Sequence[tuple[str, ...]], rng: np.random.Generator
) -> list[int]:
    """Concept indices with look-alikes next to each other (hard negatives per batch).

    Concepts are grouped by the first character 3-gram of their first name; the groups
    are shuffled, and the concepts within each, with ``rng``.
    """
    buckets: dict[str, list[int]] = {}
    for i, names in enumerate(groups):
        buckets.setdefault(names[0].lower()[:3], []).append(i)
    keys = sorted(buckets)
    out: list[int] = []
    for p in rng.permutation(len(keys)):
        members = buckets[keys[int(p)]]
        out += [members[int(q)] for q in rng.permutation(len(members))]
    return out
