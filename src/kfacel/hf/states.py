"""Consolidate a Hugging Face model through a Trainer's dataset and collator; keep states.

:func:`consolidate` runs the curvature estimators over a Trainer's kind of dataset (rows
are dicts with ``labels``) and its ``data_collator``, and returns a ``TaskState``: the
anchor and curvature of the **trainable** parameters only (with PEFT/LoRA the adapters;
the frozen base needs no state). Token-level labels ``[N, S]`` with ``-100`` follow eq.
(K9) of ``kfacel.curvature.conventions``. :func:`save_states` / :func:`load_states`
keep the states in ``DIR/consolidation/`` beside ``save_pretrained`` output, checked by
name, shape and value when loaded.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.consolidation import (
    FACTOR_RANK,
    METHODS,
    TaskState,
    curvature_to,
    estimate_curvature,
    load_state,
    save_state,
    state_dir,
)
from kfacel.curvature.factors import KFACFisher, compress_factors
from kfacel.curvature.targets import IGNORE
from kfacel.penalties import snapshot
from kfacel.training.budget import TASK_EXAMPLES

__all__ = ["FACTOR_RANK", "LOSS_TERMS", "consolidate", "load_states", "save_states"]

LOSS_TERMS = "loss_terms"
"""Key of a state's ``meta``: the labelled terms (labels other than -100) seen (K9)."""


def consolidate(
    model: nn.Module,
    dataset: Iterable[dict[str, Any]],
    *,
    data_collator: Callable[[list[dict[str, Any]]], Any],
    task: str,
    method: str = "kfac",
    fisher: str = "empirical",
    batch_size: int = 16,
    max_examples: int | None = None,
    uncovered: str = "diagonal",
    approx: str = "expand",
    columns: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    factor_rank: int | str | None = "auto",
) -> TaskState:
    """Anchor and curvature of ``model``'s trainable parameters on one finished task.

    Args:
        model: a stock ``transformers`` model (or a PEFT model) that returns ``.logits``
            ``[N, C]`` or ``[N, S, C]`` for keyword inputs.
        dataset: rows (dicts with ``labels``), as given to ``Trainer(train_dataset=...)``.
        data_collator: turns a list of rows into a batch mapping with ``labels``.
        task: the task's name (kept in the state).
        method: ``kfac`` (K-FAC, eq. K5), ``ewc`` (diagonal, K7) or ``l2`` (no curvature).
        fisher: ``empirical``, ``sampled`` or ``exact`` (K4, K9).
        batch_size: rows per collated batch.
        max_examples: use only the first rows.
        uncovered: K-FAC only: ``diagonal`` gives LayerNorms a diagonal Fisher (the
            default: an ignored LayerNorm is a free route for the new task); ``ignore``.
        approx: K-FAC only: ``expand`` (K5) or ``reduce`` (K8).
        columns: row keys passed to the model (default: the arguments its ``forward``
            names, plus ``labels``; other keys, e.g. raw strings, are dropped).
        seed: randomness of ``sampled``.
        progress: show a progress bar.
        factor_rank: K-FAC only: keep each Kronecker factor larger than this many rows
            as its top eigenpairs and the mean of the rest (K10; smaller state, cheaper
            penalty, an approximation). ``"auto"`` (the default): a PEFT model's LoRA
            layers at its largest LoRA rank (their ``[d, d]`` factors then take about
            the adapter's bytes; a trained head stays whole), whole factors for any
            other model; ``None``: whole factors.

    Returns:
        A ``TaskState`` whose ``meta`` records the example count (``task_examples``,
        for ``--lam bayes``), the labelled terms (``loss_terms``) and the factor rank.

    Raises:
        ValueError: an unknown method, no trainable parameter, no row, a batch
            without ``labels`` or a factor rank < 1; the estimators' errors (tied
            weights, unsupported layers).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    rank = _factor_rank(model, factor_rank)
    anchor = {k: v.cpu() for k, v in snapshot(model).items()}
    if not anchor:
        raise ValueError("the model has no trainable parameter to consolidate")
    keep = set(columns) if columns is not None else _forward_names(model)
    batches = _LabelledBatches(dataset, data_collator, batch_size, max_examples, keep)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    curvature = estimate_curvature(
        method, model, batches, fisher=fisher, generator=generator,
        uncovered=uncovered, approx=approx, progress=progress,
    )  # fmt: skip
    if curvature is None:
        for _ in batches:  # count the examples for the meta
            pass
    if batches.examples == 0:
        raise ValueError("consolidate saw no row: the dataset is empty")
    meta = {TASK_EXAMPLES: batches.examples, LOSS_TERMS: batches.terms, "seed": seed}
    if isinstance(curvature, KFACFisher) and rank is not None:
        only_lora = factor_rank == "auto"  # a PEFT model's trained head stays whole
        pick = (lambda name: ".lora_" in name) if only_lora else None
        curvature = compress_factors(curvature, rank, pick)
        meta[FACTOR_RANK] = rank
    return TaskState(task, method, anchor, curvature_to(curvature, "cpu"), meta)


def _factor_rank(model: nn.Module, factor_rank: int | str | None) -> int | None:
    """The rank ``consolidate`` keeps factors at: ``auto`` is a PEFT model's LoRA rank."""
    if factor_rank == "auto":
        ranks = [
            max(
                [
                    int(cfg.r),
                    *map(int, (getattr(cfg, "rank_pattern", None) or {}).values()),
                ]
            )
            for cfg in getattr(model, "peft_config", {}).values()
            if isinstance(getattr(cfg, "r", None), int)
        ]
        return max(ranks) if ranks else None
    if factor_rank is None:
        return None
    if isinstance(factor_rank, str) or factor_rank < 1:
        raise ValueError(
            f"factor_rank must be >= 1, None or 'auto', got {factor_rank!r}"
        )
    return int(factor_rank)


class _LabelledBatches:
    """Re-iterable ``(inputs, labels)`` pairs from rows and a collator; counts them."""

    def __init__(
        self,
        rows: Iterable[dict[str, Any]],
        collate: Callable[[list[dict[str, Any]]], Any],
        batch_size: int,
        limit: int | None,
        keep: set[str] | None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows, self.collate, self.batch_size = rows, collate, batch_size
        self.limit, self.keep = limit, keep
        self.examples = self.terms = 0

    def __iter__(self) -> Iterator[tuple[dict[str, Any], Tensor]]:
        self.examples = self.terms = 0
        rows: Iterable[dict[str, Any]] = _rows(self.rows)
        if self.limit is not None:
            rows = itertools.islice(rows, self.limit)
        it = iter(rows)
        while chunk := list(itertools.islice(it, self.batch_size)):
            if self.keep is not None:
                chunk = [{k: v for k, v in r.items() if k in self.keep} for r in chunk]
            batch = dict(self.collate(chunk))
            labels = batch.pop("labels", None)
            if not isinstance(labels, Tensor):
                raise ValueError("the collated batch has no 'labels' tensor")
            self.examples += int(labels.shape[0])
            self.terms += int((labels != IGNORE).sum())
            yield batch, labels


def _rows(dataset: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows of a map-style dataset (``len`` and indexing) or of any iterable."""
    if isinstance(dataset, Sized) and hasattr(dataset, "__getitem__"):
        indexed: Any = dataset
        for i in range(len(dataset)):
            yield indexed[i]
    else:
        yield from dataset


def _forward_names(model: nn.Module) -> set[str] | None:
    """Keyword arguments the model's ``forward`` names (PEFT: its base model's)."""
    get_base = getattr(model, "get_base_model", None)
    base: Any = get_base() if callable(get_base) else model
    params = inspect.signature(base.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None  # takes anything: keep every column
    return {p.name for p in params} | {"labels"}


def save_states(directory: Path | str, states: Sequence[TaskState]) -> Path:
    """Write ``states`` in order to ``directory/consolidation/`` (beside ``save_pretrained``).

    Raises:
        ValueError: the directory already holds consolidation states (write all of them
            at once, into a fresh model directory).
    """
    out = state_dir(directory)
    if out.is_dir() and any(out.glob("*.json")):
        raise ValueError(
            f"{out} already holds consolidation states; save every state at once "
            "into a fresh model directory"
        )
    for state in states:
        save_state(directory, state)
    return out


def load_states(directory: Path | str, model: nn.Module) -> list[TaskState]:
    """The states of ``directory``, each checked against ``model`` (names, shapes, values).

    Raises:
        ValueError: a state file is malformed, holds non-finite or negative curvature,
            or does not match the model (named).
    """
    return list(load_state(directory, model))
