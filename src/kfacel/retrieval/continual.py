"""The dense retriever in continual learning: its Fisher at a task's end, its penalty.

The retriever (``retrieval.finetune``) learns eq. R2 through ``PairScorer``, which
classifies each name's partner among the other names of its batch; eq. R2 is the mean
cross-entropy of that classifier. Its Fisher is therefore estimated as the ranker's
is, by K-FAC of the scorer (eqs. K1–K6) over batches drawn as the task's fine-tuning
drew them. The names of a batch are one another's classes, so no name's loss depends on
its own encoding alone; each name ``i`` is one example whose gradient is the batch
loss's gradient through ``i``'s own encoding (eq. R3)

    F_R ≈ (1/N) Σ_i ∇_{θ|i} L_b ∇_{θ|i} L_bᵀ,    Σ_{i ∈ b} ∇_{θ|i} L_b = ∇_θ L_b,

which is what the K-FAC factors read at name ``i``'s positions (inputs there, output
gradients of the summed loss there). Word, position and type embeddings and every
Linear layer of the encoder are covered; LayerNorm is left out as the paper leaves it.

A state is written into the retriever's own checkpoint (``retriever/consolidation/``,
the layout of ``kfacel.consolidation``), so it travels with the retriever: into the
model directory (``kfacel train``), then into the next task's retriever
(``kfacel prepare --retriever-init``), whose fine-tuning it penalizes with KFC (eq. P1,
factored damping eq. P4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kfacel.consolidation import (
    TaskState,
    estimate_curvature,
    load_state,
    snapshot,
)
from kfacel.penalties import build_penalty
from kfacel.penalties.strength import DEFAULT_KFAC_DAMPING
from kfacel.retrieval.dense import RETRIEVER_STATES, SentenceEncoder, padded
from kfacel.retrieval.finetune import (
    PairScorer,
    RetrieverSettings,
    RetrieverStart,
    pair_steps,
    partners,
)

DEFAULT_RETRIEVER_LAM = 1e2
"""λ of the retriever's KFC penalty when none is given: of the order of the λ at which
the unprotected update's displacement in the old task's Fisher norm costs 1 nat (70.8
for NCBI → CADEC; docs/results.md, "Retrieval and candidate generation")."""
DEFAULT_RETRIEVER_STEPS = 32
"""Batches (of 64 concepts × 2 names) the retriever's Fisher is estimated on."""


def consolidate_retriever(
    encoder: SentenceEncoder,
    groups: Sequence[tuple[str, ...]],
    settings: RetrieverSettings,
    *,
    task: str,
    max_steps: int | None = None,
    progress: bool = False,
) -> TaskState:
    """Anchor and K-FAC Fisher of the retriever ``encoder`` on a task's ``groups``.

    Args:
        encoder: the task's fine-tuned retriever.
        groups: the synonym groups it was fine-tuned on (``tasks.directory.retriever_groups``).
        settings: its fine-tuning settings (temperature, batch, seed: the batches are
            one epoch of ``pair_steps``).
        task: the task's name.
        max_steps: use at most this many batches (None: the whole epoch).
        progress: a progress bar.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    steps = pair_steps(encoder, groups, replace(settings, epochs=1))[:max_steps]
    scorer = PairScorer(encoder.model, settings.temperature)
    batches = _PairBatches(steps)
    curvature = estimate_curvature(
        "kfac", scorer, batches, fisher="empirical", progress=progress
    )
    meta: dict[str, Any] = {
        "model": "retriever",
        "examples_used": sum(len(rows) for rows in steps),
        "steps": len(steps),
        "temperature": settings.temperature,
        "batch_concepts": settings.batch_concepts,
        "seed": settings.seed,
    }
    return TaskState(task, "kfac", snapshot(scorer), curvature, meta)


def consolidate_task_retriever(
    checkpoint: Path | str,
    trained: Path,
    groups: Sequence[tuple[str, ...]],
    settings: RetrieverSettings,
    *,
    task: str,
    max_steps: int | None = DEFAULT_RETRIEVER_STEPS,
    progress: bool = False,
) -> TaskState:
    """The state of the retriever ``checkpoint`` on the task that trained it.

    Args:
        checkpoint: the retriever to consolidate (a model directory's ``retriever/``).
        trained: the task directory's ``retriever/``, which must hold the same
            weights: the Fisher is estimated on the groups and batches the retriever
            was trained on.
        groups: the task's synonym groups (``tasks.directory.retriever_groups``).
        settings: its fine-tuning's batching (``tasks.directory.recorded_settings``).
        task: the task's name.
        max_steps: use at most this many batches (None: the whole epoch).
        progress: a progress bar.

    Raises:
        ValueError: the task's retriever is not this one.
    """
    path = Path(checkpoint)
    if _digest(path) != _digest(trained):
        raise ValueError(
            f"{path} is not the retriever of task {trained.parent} ({trained} "
            "holds other weights)"
        )
    return consolidate_retriever(
        SentenceEncoder(path), groups, settings, task=task,
        max_steps=max_steps, progress=progress,
    )  # fmt: skip


def _digest(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()


def retriever_states(checkpoint: Path | str) -> tuple[TaskState, ...]:
    """The consolidation states a retriever checkpoint holds, checked against it."""
    encoder = SentenceEncoder(checkpoint)
    return load_state(checkpoint, PairScorer(encoder.model, 1.0))


def retriever_start(
    checkpoint: Path | str,
    *,
    lam: float | None = DEFAULT_RETRIEVER_LAM,
    damping: float = DEFAULT_KFAC_DAMPING,
) -> RetrieverStart:
    """Start fine-tuning from ``checkpoint``, its earlier tasks penalized by KFC.

    Args:
        checkpoint: a retriever checkpoint, or a model or task directory holding one
            as ``retriever/``.
        lam: λ of every earlier task's term (None: plain fine-tuning, no penalty).
        damping: factored damping δ of the K-FAC factors (eq. P4).

    Raises:
        FileNotFoundError: no retriever checkpoint there.
        ValueError: a penalty is asked for and the checkpoint holds no state (run
            ``kfacel consolidate``), or a state does not fit the retriever.
    """
    path = Path(checkpoint)
    if (path / "retriever").is_dir():
        path = path / "retriever"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{checkpoint}: no retriever checkpoint (a model or task directory built "
            "with --retriever-epochs, or its retriever/)"
        )
    if lam is None:
        return RetrieverStart(path, None, {"penalty": "none"})
    states = retriever_states(path)
    if not states:
        raise ValueError(
            f"{path / RETRIEVER_STATES}: no consolidation state to penalize; run "
            "`kfacel consolidate MODEL --task TASK` on the task it was trained on, or "
            "start without a penalty (--retriever-lam 0)"
        )
    penalty = build_penalty(
        "kfac", states, [lam] * len(states), damping=damping, damping_kind="factored"
    )
    record = {
        "penalty": "kfac",
        "lam": lam,
        "damping": damping,
        "damping_kind": "factored",
        "tasks": [s.task for s in states],
    }
    return RetrieverStart(path, penalty, record)


class _PairBatches:
    """``(inputs, partners)`` of each step, re-iterable, as the estimators expect."""

    def __init__(self, steps: Sequence[list[list[int]]]) -> None:
        self.steps = steps

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        return ((padded(rows), partners(len(rows))) for rows in self.steps)

    def __len__(self) -> int:
        return len(self.steps)
