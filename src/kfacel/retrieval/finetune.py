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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kfacel._progress import with_progress
from kfacel.data.records import Concept
from kfacel.retrieval.dense import SentenceEncoder, mean_pooled, padded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieverStart:
    """Where the retriever's fine-tuning starts, and what protects earlier tasks.

    Attributes:
        checkpoint: a retriever checkpoint (an earlier task's or model's
            ``retriever/``); its ``consolidation/`` states travel on with the new one.
        penalty: ``R(θ)`` of the ``PairScorer`` over the retriever, built from those
            states (``retrieval.continual.retriever_start``); None: plain fine-tuning.
        record: what ``task.json`` records of the start (path, penalty, λ, tasks).
    """

    checkpoint: Path
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None
    record: dict[str, Any] = field(default_factory=dict)


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
        start: start from an earlier retriever, penalized (None: MiniLM as shipped).
    """

    epochs: int = 1
    batch_concepts: int = 64
    lr: float = 2e-5
    temperature: float = 0.05
    seed: int = 0
    mentions: bool = True
    start: RetrieverStart | None = None

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON object."""
        out: dict[str, Any] = {
            "epochs": self.epochs,
            "batch_concepts": self.batch_concepts,
            "lr": self.lr,
            "temperature": self.temperature,
            "seed": self.seed,
            "mentions": self.mentions,
        }
        if self.start is not None:
            out["start"] = {
                "checkpoint": str(self.start.checkpoint),
                **self.start.record,
            }
        return out


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


def pair_logits(emb: torch.Tensor, tau: float) -> torch.Tensor:
    """``s_ij / τ`` of unit rows ``emb [n, d]``, the diagonal at −∞ (eq. R2's softmax)."""
    sim = emb @ emb.T / tau
    self_mask = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    return sim.masked_fill(self_mask, float("-inf"))


class PairScorer(torch.nn.Module):
    """Eq. R2 as a classifier: each name's logits over the other names of its batch.

    A batch holds two names of each concept, partners adjacent (rows ``2k`` and
    ``2k + 1``). ``forward`` gives ``s_ij / τ`` with the diagonal at −∞, so the
    cross-entropy of row ``i`` with label ``partners(n)[i]`` is eq. R2's term for ``i``
    (``P(i)`` is the partner alone): R2 is their mean. The retriever is trained
    through it, and its Fisher is estimated through it (``retrieval.continual``).

    Args:
        encoder: the sentence encoder's module (``SentenceEncoder.model``).
        temperature: τ of eq. R2.
    """

    def __init__(self, encoder: torch.nn.Module, temperature: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[n, n]`` of the ``n`` names of a batch against each other."""
        emb = mean_pooled(self.encoder, input_ids, attention_mask)
        return pair_logits(emb, self.temperature)


def partners(n: int) -> torch.Tensor:
    """Each row's partner in a batch of adjacent pairs (rows 1, 0, 3, 2 and so on)."""
    return torch.arange(n) ^ 1


def training_groups(
    concepts: Sequence[Concept],
    settings: RetrieverSettings,
    mentions: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, ...]]:
    """The synonym groups ``fine_tune`` aligns: names, and links when ``mentions``.

    Raises:
        ValueError: when fewer than two concepts have two texts (nothing to align).
    """
    groups = synonym_groups(concepts, mentions if settings.mentions else ())
    if len(groups) < 2:
        raise ValueError(
            f"retriever fine-tuning needs concepts with synonyms; {len(groups)} of "
            f"{len(concepts)} concepts have two names or more (training links "
            "included)"
        )
    return groups


def pair_steps(
    encoder: SentenceEncoder,
    groups: Sequence[tuple[str, ...]],
    settings: RetrieverSettings,
) -> list[list[list[int]]]:
    """The batches of ``fine_tune``: token ids of two texts per group, seeded.

    One list of token id rows per step, partners adjacent; ``settings`` gives the
    epochs, concepts per batch and seed.
    """
    rng = np.random.default_rng(settings.seed)
    ids = [encoder.token_ids(g) for g in groups]
    order = _lookalike_order(groups, rng)
    b = max(2, settings.batch_concepts)
    steps = []
    for _ in range(settings.epochs):
        for lo in range(0, len(order), b):
            if len(order[lo : lo + b]) < 2:
                continue
            rows = []
            for g in order[lo : lo + b]:
                pick = rng.choice(len(ids[g]), 2, replace=False)
                rows += [ids[g][int(pick[0])], ids[g][int(pick[1])]]
            steps.append(rows)
    return steps


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
        settings: epochs, batch, learning rate, temperature, seed, ``mentions``;
            ``settings.start.penalty`` (earlier tasks' consolidation, eq. P1 over the
            ``PairScorer``) is added to eq. R2 each step. ``encoder`` should hold
            ``settings.start.checkpoint``'s weights then: the caller loads them.
        mentions: ``(text, concept id)`` training links, used when
            ``settings.mentions``; never dev or test mentions.
        progress: a progress bar.

    Returns:
        What was done: concepts with synonyms, training links used, steps, the mean
        loss (eq. R2 alone) of the first and last tenth of the steps, and with a
        penalty its mean over the last tenth (the wall time is logged, not returned,
        so that ``task.json`` stays byte-identical between runs).

    Raises:
        ValueError: when fewer than two concepts have two names (nothing to align).
    """
    groups = training_groups(concepts, settings, mentions)
    counts = {
        "concepts_with_synonyms": len(groups),
        "training_links": len(mentions) if settings.mentions else 0,
    }
    return counts | align_groups(encoder, groups, settings, progress=progress)


def align_groups(
    encoder: SentenceEncoder,
    groups: Sequence[tuple[str, ...]],
    settings: RetrieverSettings,
    *,
    progress: bool = False,
) -> dict[str, float | int]:
    """Fine-tune ``encoder`` in place on synonym ``groups`` (eq. R2); see ``fine_tune``.

    Returns:
        The steps, the mean loss (eq. R2 alone) of the first and last tenth of the
        steps, and with a penalty its mean over the last tenth.
    """
    steps = pair_steps(encoder, groups, settings)
    scorer = PairScorer(encoder.model, settings.temperature)
    penalty = settings.start.penalty if settings.start is not None else None
    opt = torch.optim.AdamW(scorer.parameters(), lr=settings.lr)
    losses, penalties = [], []
    start = time.perf_counter()
    scorer.train()
    try:
        for rows in with_progress(steps, enabled=progress, desc="align synonyms"):
            logits = scorer(**padded(rows))
            loss = torch.nn.functional.cross_entropy(logits, partners(len(rows)))
            total = loss
            if penalty is not None:
                value = penalty(scorer)
                total = loss + value
                penalties.append(value.item())
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    finally:
        scorer.eval()
        encoder.key = encoder.compute_key()  # the cache must not serve the old weights
    tenth = max(1, len(losses) // 10)
    logger.info(
        "aligned the synonyms of %d concepts in %d steps, %.1f s",
        len(groups), len(losses), time.perf_counter() - start,
    )  # fmt: skip
    done: dict[str, float | int] = {"steps": len(losses)}
    if losses:
        done["loss_first"] = round(float(np.mean(losses[:tenth])), 3)
        done["loss_last"] = round(float(np.mean(losses[-tenth:])), 3)
    if penalties:
        done["penalty_last"] = round(float(np.mean(penalties[-tenth:])), 4)
    return done


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
