"""Consolidate a linker on a linking task: its queries as batches, then the core.

``consolidate_task`` is the last step while a task's data is readable (``kfacel
consolidate``, the experiment cells, the quickstart): it turns the task's training (or
dev) queries into the linker's batches and calls ``kfacel.consolidation.consolidate``,
which returns the ``TaskState`` (anchor + curvature) that ``save_state`` writes into the
model directory. Training on the next task then needs only the states, never the old
data.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from kfacel.consolidation import (
    TASK_EXAMPLES,
    ConsolidationSettings,
    TaskState,
    consolidate,
)
from kfacel.curvature import KFACApprox
from kfacel.data.records import LinkingExample
from kfacel.linking.linker import Linker
from kfacel.tasks.directory import Task
from kfacel.types import Batch, FisherKind

CONSOLIDATION_SPLITS = ("train", "dev")
"""The splits a task's Fisher can be estimated on (``consolidate_task``)."""


def consolidate_task(
    linker: Linker,
    task: Task,
    *,
    method: str = "kfac",
    fisher: FisherKind | str = FisherKind.EMPIRICAL,
    max_examples: int | None = None,
    batch_size: int = 64,
    uncovered: str = "ignore",
    approx: KFACApprox | str = KFACApprox.EXPAND,
    split: str = "train",
    factor_rank: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> TaskState:
    """Anchor and curvature of ``linker`` on ``task``'s training (or dev) queries.

    Args:
        linker: the model trained on ``task``.
        task: the task (its train split is read).
        method: ``kfac`` (K-FAC Fisher), ``ewc`` (diagonal Fisher) or ``l2`` (anchor only).
        fisher: labels of the per-example gradients (K4).
        uncovered: K-FAC only: ``ignore`` (paper) or ``diagonal`` for LayerNorm.
        approx: K-FAC only: ``expand`` (the paper, K5) or ``reduce`` (K8).
        factor_rank: K-FAC only: keep large Kronecker factors at this rank (K10);
            None keeps them whole (``ConsolidationSettings``).
        max_examples: use a seeded random subset of this many training queries.
        batch_size: queries per batch for the estimate.
        split: the queries the Fisher is estimated on: ``train`` (the paper's eq. 3;
            already fit, so their gradients are small) or ``dev`` (held out, read
            while the task is still at hand).
        seed: subset choice and ``sampled`` labels.
        device: where to compute.
        progress: progress bar.
    """
    settings = ConsolidationSettings(
        method=method, fisher=fisher, uncovered=uncovered, approx=approx,
        factor_rank=factor_rank, seed=seed, progress=progress,
    )  # fmt: skip
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be positive, got {max_examples}")
    if split not in CONSOLIDATION_SPLITS:
        raise ValueError(f"split must be one of {CONSOLIDATION_SPLITS}, got {split!r}")
    examples = _subset(task.split(split), max_examples, seed)
    if not examples:
        raise ValueError(f"task {task.name!r} has no {split} queries to consolidate")
    meta: dict[str, Any] = {
        "fingerprint": fingerprint(examples),
        "examples_used": len(examples),
        TASK_EXAMPLES: len(task.train),
        "batch_size": batch_size,
        "seed": seed,
        "split": split,
    }
    model = linker.model.to(device)
    try:
        batches = _LabelledBatches(linker.batches(examples, batch_size))
        return consolidate(model, batches, settings, task=task.name, meta=meta)
    finally:
        model.to("cpu")


def fingerprint(examples: Sequence[LinkingExample]) -> str:
    """SHA-256 of the queries, to tell later which data a state was estimated on."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.to_json(), sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def _subset(
    examples: Sequence[LinkingExample], k: int | None, seed: int
) -> list[LinkingExample]:
    """A seeded random ``k`` of ``examples`` in their order (all when ``k`` is None)."""
    if k is None or k >= len(examples):
        return list(examples)
    idx = sorted(random.Random(seed).sample(range(len(examples)), k))
    return [examples[i] for i in idx]


class _LabelledBatches:
    """``(batch, batch.labels)`` pairs, re-iterable, as the estimators expect."""

    def __init__(self, batches: Sequence[Batch]):
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[Batch, torch.Tensor]]:
        return ((b, b.labels) for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)
