"""Consolidate a Hugging Face model through a Trainer's dataset and collator; keep states.

:func:`consolidate` turns a Trainer's kind of dataset (rows are dicts with ``labels``)
and its ``data_collator`` into batches for the one consolidation core
(``kfacel.consolidation.consolidate``), which returns a ``TaskState``: the anchor and
curvature of the **trainable** parameters only (with PEFT/LoRA the adapters;
the frozen base needs no state). Token-level labels ``[N, S]`` with ``-100`` follow eq.
(K9) of ``kfacel.curvature.conventions``. :func:`save_states` / :func:`load_states`
keep the states in ``DIR/consolidation/`` beside ``save_pretrained`` output, checked by
name, shape and value when loaded.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kfacel.consolidation import (
    FACTOR_RANK,
    TASK_EXAMPLES,
    ConsolidationSettings,
    TaskState,
    load_state,
    save_state,
    state_dir,
)
from kfacel.consolidation import consolidate as consolidate_batches
from kfacel.curvature.targets import IGNORE

__all__ = [
    "FACTOR_RANK",
    "LOSS_TERMS",
    "check_coverage",
    "consolidate",
    "load_states",
    "save_states",
]

LABEL_COLUMNS = frozenset({"labels", "label", "label_ids"})
"""Row keys kept as labels whatever ``forward`` names (as ``transformers.Trainer``)."""
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
        columns: row keys passed to the collator (default: as ``transformers.Trainer``
            keeps them, the arguments ``forward`` names and the label columns; other
            keys, e.g. a raw ``text`` column, are dropped).
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
    rank = _factor_rank(model, factor_rank)
    settings = ConsolidationSettings(
        method=method, fisher=fisher, uncovered=uncovered, approx=approx,
        factor_rank=rank if method == "kfac" else None,
        # "auto": a PEFT model's trained head stays whole
        low_rank_layers=(lambda name: ".lora_" in name) if factor_rank == "auto" else None,
        seed=seed, progress=progress,
    )  # fmt: skip
    keep = set(columns) if columns is not None else _forward_names(model)
    batches = _LabelledBatches(dataset, data_collator, batch_size, max_examples, keep)
    state = consolidate_batches(model, batches, settings, task=task)
    if state.curvature is None:
        for _ in batches:  # count the examples for the meta
            pass
    if batches.examples == 0:
        raise ValueError("consolidate saw no row: the dataset is empty")
    state.meta.update(
        {TASK_EXAMPLES: batches.examples, LOSS_TERMS: batches.terms, "seed": seed}
    )
    return state


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
            chunk = [_model_columns(r, self.keep) for r in chunk]
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
    """Row keys passed to the model, as ``transformers.Trainer`` keeps them.

    The arguments its ``forward`` names (PEFT: its base model's) plus the label columns;
    a ``**kwargs`` catch-all adds nothing (a stock model's takes attention options, not
    columns). None for a ``forward`` that names none: then only text columns are dropped.
    """
    get_base = getattr(model, "get_base_model", None)
    base: Any = get_base() if callable(get_base) else model
    params = inspect.signature(base.forward).parameters.values()
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    named = {p.name for p in params if p.kind not in variadic}
    return named | LABEL_COLUMNS if named else None


def _model_columns(row: dict[str, Any], keep: set[str] | None) -> dict[str, Any]:
    """The keys of ``row`` in ``keep``; with ``keep`` None, those that hold no text."""
    if keep is not None:
        return {k: v for k, v in row.items() if k in keep}
    return {k: v for k, v in row.items() if not _is_text(v)}


def _is_text(value: Any) -> bool:
    """A string, or a list of them (a column no collator turns into a tensor)."""
    while isinstance(value, list | tuple) and value:
        value = value[0]
    return isinstance(value, str | bytes)


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


def load_states(
    directory: Path | str, model: nn.Module, *, strict: bool = False
) -> list[TaskState]:
    """The states of ``directory``, each checked against ``model`` (names, shapes, values).

    Args:
        directory: a model directory with ``consolidation/`` (:func:`save_states`).
        model: the model the states will penalize.
        strict: refuse, instead of warning about, trainable layers of ``model`` that no
            state covers (a state of a smaller model, e.g. fewer layers).

    Raises:
        ValueError: a state file is malformed, holds non-finite or negative curvature,
            or does not match the model (named); with ``strict``, no state at all or
            a trainable layer no state covers (named).
    """
    states = list(load_state(directory, model))
    check_coverage(states, model, where=str(directory), strict=strict)
    return states


def check_coverage(
    states: Sequence[TaskState], model: nn.Module, *, where: str, strict: bool
) -> None:
    """Warn about (``strict``: refuse) trainable layers that no state anchors.

    Such a layer trains unpenalized: the states were taken of another model, e.g.
    one with fewer layers, or before more parameters were made trainable.

    Raises:
        ValueError: with ``strict``, no state or an uncovered layer (named).
    """
    covered = {name for state in states for name in state.anchor}
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and n not in covered
    ]
    if states and not missing:
        return
    if not states:
        message = f"{where}: no consolidation state to penalize with"
    else:
        layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in missing))
        more = f" and {len(layers) - 5} more" if len(layers) > 5 else ""
        message = (
            f"{where}: no consolidation state covers the trainable layers "
            f"{', '.join(layers[:5])}{more}; they train without a penalty"
        )
    if strict:
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)
