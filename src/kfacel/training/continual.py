"""Continual learning on top of the trainer: consolidate a task, and LRC parameter groups.

``consolidate_task`` is the last step while a task's data is readable: it estimates the
task's curvature at the trained weights and returns the ``TaskState`` (anchor + curvature)
that ``kfacel.consolidation.save_state`` writes into the model directory. Training on the
next task then needs only the states (``build_penalty``), never the old data.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from kfacel.consolidation import (
    FACTOR_RANK,
    TaskState,
    curvature_to,
    estimate_curvature,
)
from kfacel.curvature import KFACApprox, KFACFisher, compress_factors
from kfacel.data.records import LinkingExample
from kfacel.penalties import snapshot
from kfacel.tasks.directory import Task
from kfacel.training.budget import TASK_EXAMPLES
from kfacel.training.pipeline import Linker
from kfacel.types import Batch, ConsolidationMethod, FisherKind

METHODS = tuple(m.value for m in ConsolidationMethod)


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
        max_examples: use a seeded random subset of this many training queries.
        batch_size: queries per batch for the estimate.
        uncovered: K-FAC only: ``ignore`` (paper) or ``diagonal`` for LayerNorm.
        approx: K-FAC only: ``expand`` (positions, candidates and calls as independent
            uses, the paper) or ``reduce`` (aggregated per example); conventions K5, K8.
        split: the queries the Fisher is estimated on: ``train`` (the paper's eq. 3;
            already fit, so their gradients are small) or ``dev`` (held out, read
            while the task is still at hand).
        factor_rank: K-FAC only: keep each Kronecker factor larger than this at its
            top eigenpairs and the mean of the rest (K10): a smaller state and a
            cheaper penalty step (``G Δ A`` in ``O(o·i·k)``); None keeps them whole.
        seed: subset choice and ``sampled`` labels.
        device: where to compute.
        progress: progress bar.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be positive, got {max_examples}")
    if factor_rank is not None and (method != "kfac" or factor_rank < 1):
        raise ValueError(
            f"factor_rank needs method 'kfac' and a rank >= 1, got {method!r} and "
            f"{factor_rank}"
        )
    if split not in CONSOLIDATION_SPLITS:
        raise ValueError(f"split must be one of {CONSOLIDATION_SPLITS}, got {split!r}")
    examples = _subset(task.split(split), max_examples, seed)
    if not examples:
        raise ValueError(f"task {task.name!r} has no {split} queries to consolidate")
    model = linker.model.to(device)
    meta: dict[str, Any] = {
        "fingerprint": fingerprint(examples),
        "examples_used": len(examples),
        TASK_EXAMPLES: len(task.train),
        "batch_size": batch_size,
        "seed": seed,
        "split": split,
    }
    try:
        batches = _LabelledBatches(linker.batches(examples, batch_size))
        generator = torch.Generator(device=device).manual_seed(seed)
        curvature = estimate_curvature(
            method, model, batches, fisher=fisher, generator=generator,
            uncovered=uncovered, approx=approx, progress=progress,
        )  # fmt: skip
        anchor = {k: v.cpu() for k, v in snapshot(model).items()}
    finally:
        model.to("cpu")
    curvature = curvature_to(curvature, "cpu")
    if isinstance(curvature, KFACFisher) and factor_rank is not None:
        curvature = compress_factors(curvature, factor_rank)
        meta[FACTOR_RANK] = factor_rank
    return TaskState(task.name, method, anchor, curvature, meta)


def discriminative_lr_groups(
    model: nn.Module, lr: float, gamma: float
) -> list[dict[str, Any]]:
    """Parameter groups with ``η_ℓ = η_{ℓ+1} · γ`` from the top layer down (ULMFiT).

    Layers, bottom to top: parameters whose name contains ``embed``; then transformer
    blocks in index order (``layer.<i>.`` / ``layers.<i>.`` / ``blocks.<i>.``); then
    everything else (encoders of the CNN, scorer and heads) as the top layer at ``lr``.

    Reference: Howard & Ruder 2018, "Universal language model fine-tuning for text
    classification", ACL, §3.2.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"the LRC factor gamma must be in (0, 1], got {gamma}")
    ranked: dict[int, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            ranked.setdefault(_depth(name), []).append(p)
    top = max(ranked)
    order = sorted(ranked)
    return [
        {"params": ranked[d], "lr": lr * gamma ** (len(order) - 1 - i), "depth": d}
        for i, d in enumerate(order)
        if ranked[d] or d == top
    ]


def fingerprint(examples: Sequence[LinkingExample]) -> str:
    """SHA-256 of the queries, to tell later which data a state was estimated on."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.to_json(), sort_keys=True).encode("utf-8"))
    return h.hexdigest()


_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks?)\.(\d+)\.")


def _depth(name: str) -> int:
    if "embed" in name:
        return 0
    m = _BLOCK.search(name)
    return 1 + int(m.group(1)) if m else 1_000_000


def _subset(
    examples: Sequence[LinkingExample], k: int | None, seed: int
) -> list[LinkingExample]:
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
