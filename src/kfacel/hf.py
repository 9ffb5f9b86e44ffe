"""KFC for stock Hugging Face models: consolidate through a collator, train with a Trainer.

Needs the ``hf`` extra (``transformers`` with ``accelerate``; ``peft`` for LoRA). Importing
``kfacel`` does not import this module; ``import kfacel.hf`` imports ``transformers``.

- :func:`consolidate` runs the curvature estimators over a Trainer's kind of dataset (rows
  are dicts with ``labels``) and its ``data_collator``, and returns a ``TaskState``:
  the anchor and curvature of the **trainable** parameters only (with PEFT/LoRA the
  adapters; the frozen base needs no state). Token-level labels ``[N, S]`` with ``-100``
  follow eq. (K9) of ``kfacel.curvature.conventions``.
- :class:`KFCTrainer` is a ``transformers.Trainer`` that adds the penalty of every state,
  eq. (P1), with its closed-form gradient (P3) **once per optimizer step**: a step
  pre-hook on the optimizer adds ``∂R/∂θ`` to the gradients after they are accumulated,
  averaged over processes, unscaled and clipped (the task gradient alone is clipped),
  so λ does not depend on gradient accumulation or on the number of processes. It logs
  ``kfc_penalty`` (the mean of R over the steps since the last log) and each task's λ.
- :func:`save_states` / :func:`load_states` keep the states in ``DIR/consolidation/``
  beside ``save_pretrained`` output, checked by name, shape and value when loaded.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from kfacel.consolidation import (
    METHODS,
    TaskState,
    build_penalty,
    check_state,
    curvature_to,
    estimate_curvature,
    load_state,
    save_state,
    state_dir,
)
from kfacel.curvature.factors import KFACFisher, compress_factors
from kfacel.curvature.targets import IGNORE
from kfacel.penalties import Penalty, snapshot
from kfacel.training.budget import (
    DEFAULT_BUDGET,
    DEFAULT_BUDGET_RATE,
    TASK_EXAMPLES,
    BudgetPenalty,
    budget_penalty,
)

__all__ = ["KFCTrainer", "consolidate", "load_states", "save_states"]

log = logging.getLogger(__name__)

LOSS_TERMS = "loss_terms"
"""Key of a state's ``meta``: the labelled terms (labels other than -100) seen (K9)."""

FACTOR_RANK = "factor_rank"
"""Key of a state's ``meta``: the rank its large Kronecker factors are kept at (K10)."""


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
            penalty, an approximation). ``"auto"`` (the default): the largest LoRA rank
            of a PEFT model (its ``[d, d]`` factors then take about the adapter's
            bytes), whole factors for any other model; ``None``: whole factors.

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
        curvature = compress_factors(curvature, rank)
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


def _state_to(state: TaskState, device: torch.device) -> TaskState:
    """``state`` with its anchor and curvature on ``device`` (where the model trains)."""
    anchor = {k: v.to(device) for k, v in state.anchor.items()}
    return replace(
        state, anchor=anchor, curvature=curvature_to(state.curvature, device)
    )


class KFCTrainer(Trainer):
    """A ``transformers.Trainer`` that adds the KFC / EWC / L2 penalty of finished tasks.

    Every optimizer step adds ``∂R/∂θ`` of ``R(θ) = ½ Σ_t λ_t (θ − θ*_t)ᵀ (F_t + δI)
    (θ − θ*_t)``, eq. (P1), to the gradients in closed form (P3), once, right before the
    optimizer updates: after gradient accumulation, the average over processes, loss
    unscaling and clipping. So the penalty's weight in the update is λ whatever
    ``gradient_accumulation_steps`` and world size are; the penalty is never added to a
    micro-batch loss (which the Trainer would rescale). With ``states=[]`` it is a plain
    Trainer.

    Args:
        states: consolidated tasks (:func:`consolidate` or :func:`load_states`); each
            uses its own method (``kfac``, ``ewc`` or ``l2``).
        lam: λ for every state, or one per state (fixed strengths).
        budget: a forgetting budget ε for every state or one per state, in nats per
            loss term (the unit of the Trainer's loss: a labelled token of a token
            task, an example of a sequence task), kept by dual ascent on λ_t
            (``kfacel.training.budget``); kfac/ewc only. ``½ΔᵀFΔ`` predicts the rise
            of an example's summed loss (K9), so the constraint is ``½ΔᵀFΔ ≤ ε·T/N``
            with the state's labelled terms T and examples N.
            With neither ``lam`` nor ``budget``, the product's default budget
            (``kfacel.training.update.DEFAULT_BUDGET``), as ``kfacel train`` uses it.
        damping: δ of eq. (P1).
        budget_rate: the dual step of a budget **per epoch** (λ_t changes by at most this
            share over one epoch, spread over its optimizer steps), as in ``kfacel
            train --budget-rate``; so the λ ramp does not depend on the dataset's size.
        **kwargs: passed to ``transformers.Trainer``.

    Raises:
        ValueError: both ``lam`` and ``budget``, a count of λ or ε that differs from
            the states, or a state that does not match the model.
    """

    def __init__(
        self,
        *args: Any,
        states: Sequence[TaskState] = (),
        lam: float | Sequence[float] | None = None,
        budget: float | Sequence[float] | None = None,
        damping: float = 0.0,
        budget_rate: float = DEFAULT_BUDGET_RATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError("KFCTrainer needs model=")
        self.kfc_model: nn.Module = self.model
        device = next(self.kfc_model.parameters()).device
        for state in states:
            check_state(state, self.kfc_model, where=f"KFCTrainer state {state.task!r}")
        self.kfc_states = tuple(_state_to(s, device) for s in states)
        if states and lam is None and budget is None:
            budget = DEFAULT_BUDGET
        self.kfc_penalties = _penalties(self.kfc_states, lam, budget, damping)
        self.kfc_budget_rate = budget_rate
        self._kfc_hooked: Any = None
        self._kfc_handle: Any = None
        self._kfc_sum, self._kfc_steps = 0.0, 0

    def training_step(
        self, model: nn.Module, inputs: Any, *args: Any, **kw: Any
    ) -> Tensor:
        """The Trainer's step; makes sure the penalty hook sits on this optimizer."""
        self._hook_optimizer()
        return super().training_step(model, inputs, *args, **kw)  # type: ignore[no-any-return]

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; the optimizer hook is removed when it returns."""
        if any(isinstance(p, BudgetPenalty) for p, _ in self.kfc_penalties):
            steps = len(self.get_train_dataloader())
            steps = max(1, steps // max(1, self.args.gradient_accumulation_steps))
            for penalty, _ in self.kfc_penalties:
                if isinstance(penalty, BudgetPenalty):
                    penalty.rate = min(1.0, self.kfc_budget_rate / steps)
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._kfc_handle is not None:
                self._kfc_handle.remove()
            self._kfc_hooked = self._kfc_handle = None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add ``kfc_penalty`` and λ per task to the training logs."""
        if self.kfc_penalties and "loss" in logs and self._kfc_steps:
            logs = {**logs, **self.kfc_status()}
            self._kfc_sum, self._kfc_steps = 0.0, 0
        super().log(logs, *args, **kwargs)

    def kfc_status(self) -> dict[str, float]:
        """The mean penalty since the last log and each task's λ.

        Under a budget also the predicted rise of each task's loss per term (the
        budget's unit).
        """
        out = {"kfc_penalty": self._kfc_sum / max(self._kfc_steps, 1)}
        for penalty, states in self.kfc_penalties:
            if isinstance(penalty, BudgetPenalty):
                status = penalty.status()
                for state in states:
                    st = status[state.task]
                    out[f"kfc_lam/{state.task}"] = st["lam"]
                    rise = st["predicted_rise"] / terms_per_example(state)
                    out[f"kfc_rise/{state.task}"] = rise
            else:
                for state, lam in zip(states, _lams_of(penalty), strict=True):
                    out[f"kfc_lam/{state.task}"] = lam
        return out

    def _hook_optimizer(self) -> None:
        """Register the penalty's step pre-hook on the innermost torch optimizer."""
        if not self.kfc_penalties:
            return
        if getattr(self, "is_deepspeed_enabled", False):
            raise ValueError(
                "KFCTrainer does not support DeepSpeed (its own optimizer)"
            )
        raw: Any = self.optimizer
        while isinstance(getattr(raw, "optimizer", None), torch.optim.Optimizer):
            raw = raw.optimizer  # accelerate's AcceleratedOptimizer wraps the real one
        if raw is self._kfc_hooked:
            return
        if self._kfc_handle is not None:
            self._kfc_handle.remove()
        self._kfc_handle = raw.register_step_pre_hook(self._add_penalty_grad)
        self._kfc_hooked = raw

    def _add_penalty_grad(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """``.grad += ∂R/∂θ`` once per optimizer step, eq. (P3)."""
        value = 0.0
        for penalty, _ in self.kfc_penalties:
            value += float(penalty.add_grad_(self.kfc_model))
        self._kfc_sum += value
        self._kfc_steps += 1


def _penalties(
    states: Sequence[TaskState],
    lam: float | Sequence[float] | None,
    budget: float | Sequence[float] | None,
    damping: float,
) -> list[tuple[Penalty, tuple[TaskState, ...]]]:
    """One penalty per method over its states, with their λ (or budgets)."""
    if not states:
        return []
    if lam is not None and budget is not None:
        raise ValueError("KFCTrainer takes lam= or budget=, not both")
    values = _per_state(lam if budget is None else budget, len(states))
    out: list[tuple[Penalty, tuple[TaskState, ...]]] = []
    for method in dict.fromkeys(s.method for s in states):
        idx = [i for i, s in enumerate(states) if s.method == method]
        group = tuple(states[i] for i in idx)
        vals = [values[i] for i in idx]
        if budget is None:
            out.append((build_penalty(method, group, vals, damping=damping), group))
        else:
            per_example = [
                v * terms_per_example(st) for v, st in zip(vals, group, strict=True)
            ]
            bp = budget_penalty(method, group, per_example, damping=damping)
            out.append((bp, group))
    return out


def terms_per_example(state: TaskState) -> float:
    """The state's labelled loss terms per example (1 when it does not record them)."""
    terms, examples = state.meta.get(LOSS_TERMS), state.meta.get(TASK_EXAMPLES)
    if not terms or not examples:
        return 1.0
    return float(terms) / float(examples)


def _per_state(value: Any, n: int) -> list[float]:
    """A number for each of ``n`` states from one number or a sequence of them."""
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{n} states but {len(values)} λ / budget values")
    return values


def _lams_of(penalty: Any) -> list[float]:
    """The λ of each term of a fixed-λ penalty (KFAC, EWC, L2)."""
    terms = getattr(penalty, "terms", ())
    return [float(t[-1]) for t in terms]


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
