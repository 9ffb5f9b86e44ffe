"""KFCTrainer: a ``transformers.Trainer`` that adds the KFC / EWC / L2 penalty of finished tasks.

The penalty of every state, eq. (P1), is added with its closed-form gradient (P3) **once
per optimizer step**: a step pre-hook on the optimizer adds ``∂R/∂θ`` to the gradients
after they are accumulated, averaged over processes, unscaled and clipped (the task
gradient alone is clipped), so λ does not depend on gradient accumulation or on the
number of processes. It logs ``kfc_penalty`` (the mean of R over the steps since the last
log) and each task's λ (and, under a budget, the predicted rise per loss term).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from kfacel.consolidation import (
    TASK_EXAMPLES,
    TaskState,
    check_state,
    curvature_to,
    load_state,
)
from kfacel.hf.states import LOSS_TERMS, check_coverage
from kfacel.penalties import BudgetPenalty, Penalty, make_penalty
from kfacel.penalties.strength import (
    DEFAULT_BUDGET,
    DEFAULT_BUDGET_RATE,
    KFC_TRAINER_DAMPING,
    Damping,
    TaskStrengths,
    check_budget_rate,
    step_rate,
)

__all__ = ["KFCTrainer"]


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
        states: consolidated tasks (:func:`consolidate` or :func:`load_states`), or a
            model directory to load them from (:func:`save_states`); each uses its own
            method (``kfac``, ``ewc`` or ``l2``). Trainable layers that no state covers
            are named in a warning.
        lam: λ for every state, or one per state (fixed strengths).
        budget: a forgetting budget ε for every state or one per state, in nats per
            loss term (the unit of the Trainer's loss: a labelled token of a token
            task, an example of a sequence task), kept by dual ascent on λ_t
            (``kfacel.penalties.budget``); kfac/ewc only. ``½ΔᵀFΔ`` predicts the rise
            of an example's summed loss (K9), so the constraint is ``½ΔᵀFΔ ≤ ε·T/N``
            with the state's labelled terms T and examples N.
            With neither ``lam`` nor ``budget``, the product's default budget
            (``kfacel.penalties.strength.DEFAULT_BUDGET``), as ``kfacel train`` uses it.
        damping: δ of eq. (P1), uniform, for every method (default
            ``KFC_TRAINER_DAMPING``: none, unlike ``kfacel train``'s factored δ for kfac).
        budget_rate: the dual step of a budget **per epoch** (λ_t changes by at most this
            share over one epoch, spread over its optimizer steps), as in ``kfacel
            train --budget-rate``; so the λ ramp does not depend on the dataset's size.
        strict: refuse trainable layers that no state covers instead of warning.
        **kwargs: passed to ``transformers.Trainer``.

    Raises:
        ValueError: both ``lam`` and ``budget``, a budget (given or default) for an
            ``l2`` state, a ``budget_rate`` outside (0, 100], a count of λ or ε that
            differs from the states, a state that does not match the model, a
            directory without states, ``states`` of another type, or (``strict``) a
            trainable layer no state covers.
    """

    def __init__(
        self,
        *args: Any,
        states: Sequence[TaskState] | str | PathLike[str] = (),
        lam: float | Sequence[float] | None = None,
        budget: float | Sequence[float] | None = None,
        damping: float = KFC_TRAINER_DAMPING,
        budget_rate: float = DEFAULT_BUDGET_RATE,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError("KFCTrainer needs model=")
        self.kfc_model: nn.Module = self.model
        device = next(self.kfc_model.parameters()).device
        states = _given_states(states, self.kfc_model)
        for state in states:
            check_state(state, self.kfc_model, where=f"KFCTrainer state {state.task!r}")
        if states:
            check_coverage(states, self.kfc_model, where="KFCTrainer", strict=strict)
        self.kfc_states = tuple(_state_to(s, device) for s in states)
        if states and lam is None and budget is None:
            if any(s.method == "l2" for s in states):
                raise ValueError("KFCTrainer: l2 states have no curvature; give lam=")
            budget = DEFAULT_BUDGET
        check_budget_rate(budget_rate)
        self.kfc_penalties = _penalties_by_method(self.kfc_states, lam, budget, damping)
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
            steps = self._kfc_steps_per_epoch()
            for penalty, _ in self.kfc_penalties:
                if isinstance(penalty, BudgetPenalty):
                    penalty.rate = step_rate(self.kfc_budget_rate, steps)
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._kfc_handle is not None:
                self._kfc_handle.remove()
            self._kfc_hooked = self._kfc_handle = None

    def _kfc_steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch.

        All of ``max_steps`` for a dataset without a length (an ``IterableDataset``),
        which has no epochs to count.
        """
        try:
            batches = len(self.get_train_dataloader())
        except TypeError:
            return max(1, self.args.max_steps)
        return max(1, batches // max(1, self.args.gradient_accumulation_steps))

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
                for state, lam, rise in zip(
                    states, penalty.lams, penalty.rises, strict=True
                ):
                    out[f"kfc_lam/{state.task}"] = lam
                    out[f"kfc_rise/{state.task}"] = rise / _terms_per_example(state)
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
        """``.grad += ∂R/∂θ`` once per optimizer step, eq. (P3).

        A budget's dual step goes with it: the hook runs only on steps taken (a
        gradient scaler that skips a step skips ``optimizer.step`` and its hooks).
        """
        value = 0.0
        for penalty, _ in self.kfc_penalties:
            value += float(penalty.add_grad_(self.kfc_model))
            if isinstance(penalty, BudgetPenalty):
                penalty.after_task_step()
        self._kfc_sum += value
        self._kfc_steps += 1


def _given_states(
    states: Sequence[TaskState] | str | PathLike[str], model: nn.Module
) -> tuple[TaskState, ...]:
    """``states`` as given, or those saved in the directory ``states`` names.

    Raises:
        ValueError: a directory without states, or anything but states or a path.
    """
    if isinstance(states, str | PathLike):
        found = load_state(Path(states), model)
        if not found:
            raise ValueError(
                f"KFCTrainer: {states} holds no consolidation states "
                "(write them with kfacel.hf.save_states)"
            )
        return found
    if not isinstance(states, Sequence) or not all(
        isinstance(s, TaskState) for s in states
    ):
        raise ValueError(
            "KFCTrainer: states= takes a sequence of TaskState or a model directory, "
            f"got {type(states).__name__}"
        )
    return tuple(s for s in states if isinstance(s, TaskState))


def _penalties_by_method(
    states: Sequence[TaskState],
    lam: float | Sequence[float] | None,
    budget: float | Sequence[float] | None,
    damping: float,
) -> list[tuple[Penalty, tuple[TaskState, ...]]]:
    """One ``make_penalty`` per method over its states, with their λ (or budgets).

    A budget is given per loss term and kept per example: ε_t · T_t / N_t.
    """
    if not states:
        return []
    if lam is not None and budget is not None:
        raise ValueError("KFCTrainer takes lam= or budget=, not both")
    values = _per_state(lam if budget is None else budget, len(states))
    out: list[tuple[Penalty, tuple[TaskState, ...]]] = []
    for method in dict.fromkeys(s.method for s in states):
        idx = [i for i, s in enumerate(states) if s.method == method]
        group = tuple(states[i] for i in idx)
        vals = tuple(values[i] for i in idx)
        if budget is None:
            strengths = TaskStrengths(lams=vals)
        else:
            per_example = zip(vals, group, strict=True)
            budgets = tuple(v * _terms_per_example(st) for v, st in per_example)
            strengths = TaskStrengths(budgets=budgets)
        penalty = make_penalty(method, group, strengths, Damping(damping, "uniform"))
        out.append((penalty, group))
    return out


def _terms_per_example(state: TaskState) -> float:
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
