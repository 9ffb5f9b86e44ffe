"""KFCCallback: the KFC / EWC / L2 penalty of finished tasks for any ``transformers.Trainer``.

A ``TrainerCallback``, so it composes with ``Trainer``, ``Seq2SeqTrainer``, TRL's
``SFTTrainer`` and any subclass: ``Trainer(..., callbacks=[KFCCallback(states)])``.

- **Penalty gradient**: a step pre-hook on the innermost torch optimizer (installed at
  ``on_pre_optimizer_step``) adds ``∂R/∂θ`` of eq. (P1) in closed form (P3) right before
  the update: after gradient accumulation, the average over processes, loss unscaling
  and clipping (the task gradient alone is clipped). So λ does not depend on
  ``gradient_accumulation_steps`` or the number of processes, and the penalty is never
  part of a micro-batch loss (which the Trainer would rescale).
- **Dual step** of a forgetting budget, in the same hook, so only on steps that are
  applied: a gradient scaler that skips a step skips ``optimizer.step`` and its hooks. The
  budget's rate is per run, spread over ``state.max_steps``.
- **Logs** ``kfc_penalty`` (the mean R over the steps since the last log), each task's
  λ (``kfc_lam/<task>``) and, under a budget, its predicted rise per loss term
  (``kfc_rise/<task>``).
- **Checkpoints**: ``on_save`` writes the states (``consolidation/``, safetensors +
  JSON) and the dual state (``kfc_dual.json``: λ_t per task, dual steps taken) into the
  checkpoint folder; the dual state also goes into the checkpoint's trainer state, so
  ``trainer.train(resume_from_checkpoint=...)`` restores λ_t from any checkpoint path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from kfacel._io import atomic_dir, atomic_write_json
from kfacel.consolidation import (
    TaskState,
    check_state,
    curvature_to,
    load_state,
    save_state,
    state_dir,
)
from kfacel.hf.penalties import plan_groups, terms_per_example
from kfacel.hf.states import check_coverage
from kfacel.penalties import BudgetPenalty, Penalty
from kfacel.penalties.strength import Damping, Strength, check_budget_rate, step_rate

__all__ = ["DUAL_FILE", "KFCCallback"]

logger = logging.getLogger(__name__)

DUAL_FILE = "kfc_dual.json"
"""The dual state in a checkpoint or ``save_model`` folder: λ_t per task, steps taken."""
DUAL_KEY = "kfacel_dual"
"""Key of the dual state in the trainer state's ``stateful_callbacks`` (what resumes)."""


class KFCCallback(TrainerCallback):
    """Adds the penalty of finished tasks to any ``transformers.Trainer`` (module doc).

    Args:
        states: consolidated tasks (``consolidate`` or ``load_states``), or a model
            directory to load them from (``save_states``); each uses its own method
            (``kfac``, ``ewc`` or ``l2``). Trainable layers that no state covers are
            named in a warning. ``()``: the callback does nothing.
        strength: the strength rule (``kfacel.penalties.strength.Strength``), as
            ``kfacel train`` takes it: ``Strength(lam=1e3)``,
            ``Strength(lam_per_task={"A": 1e3})``, ``Strength(budget=0.01)``,
            ``budget_rate`` per run. None: the default budget ε = 0.005 nats per loss
            term at rate 3.9 per run (``l2`` states need a λ). A budget is in nats per
            loss term, the unit of the Trainer's loss (``kfacel.hf.penalties``).
        damping: a ``Damping`` (δ and kind), a δ, or None: ``kfac`` gets δ = 1e-6
            factored (eq. P4), others none, as ``kfacel train``.
        damping_kind: ``uniform`` or ``factored`` (kfac only) for a δ given as a number.
        strict: refuse trainable layers that no state covers instead of warning.
        model: bind to this model now (checks the states at once); else the model of
            the Trainer the callback is given to.

    Raises:
        ValueError: see ``kfacel.hf.penalties.plan_groups``; a ``budget_rate`` outside
            (0, 100]; a state that does not match the model; a directory without
            states; ``states`` of another type; (``strict``) an uncovered layer.
    """

    def __init__(
        self,
        states: Sequence[TaskState] | str | PathLike[str] = (),
        *,
        strength: Strength | None = None,
        damping: Damping | float | None = None,
        damping_kind: str | None = None,
        strict: bool = False,
        model: nn.Module | None = None,
    ) -> None:
        self.strength = strength if strength is not None else Strength()
        check_budget_rate(self.strength.budget_rate)
        self.strict = strict
        self._damping = (damping, damping_kind)
        self._given = _given_states(states)
        if not isinstance(self._given, Path):
            plan_groups(self._given, self.strength, damping, damping_kind)  # fail early
        self.states: tuple[TaskState, ...] = ()
        self.penalties: list[tuple[Penalty, tuple[TaskState, ...]]] = []
        self.dual_steps = 0
        self._model: nn.Module | None = None
        self._bound: tuple[int, torch.device] | None = None
        self._hooked: Any = None
        self._handle: Any = None
        self._sum, self._steps = 0.0, 0
        if model is not None:
            self.bind(model)

    def bind(self, model: nn.Module) -> None:
        """Check the states against ``model`` and build the penalty on its device.

        Called by the Trainer's events; binding again to the same model on the same
        device keeps the penalty (and a budget's λ_t).
        """
        device = next(model.parameters()).device
        if self._bound == (id(model), device):
            return
        states = self._given
        if isinstance(states, Path):
            states = load_state(states, model)
            if not states:
                raise ValueError(
                    f"KFCCallback: {self._given} holds no consolidation states "
                    "(write them with kfacel.hf.save_states)"
                )
        for state in states:
            check_state(state, model, where=f"KFCCallback state {state.task!r}")
        if states:
            check_coverage(states, model, where="KFCCallback", strict=self.strict)
        self.states = tuple(_state_to(s, device) for s in states)
        groups = plan_groups(self.states, self.strength, *self._damping)
        self.penalties = [(g.build(), g.states) for g in groups]
        self._model = model
        self._bound = (id(model), device)

    @property
    def budgets(self) -> list[BudgetPenalty]:
        """The penalties kept by a forgetting budget (their λ_t adapt)."""
        return [p for p, _ in self.penalties if isinstance(p, BudgetPenalty)]

    def on_init_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Bind to the Trainer's model: a state that does not fit fails at once."""
        if kw.get("model") is not None:
            self.bind(kw["model"])

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Bind, spread the budget's rate over ``max_steps``, restore a resumed λ_t."""
        if getattr(args, "deepspeed", None):
            raise ValueError(
                "KFCCallback does not support DeepSpeed (its own optimizer)"
            )
        if kw.get("model") is not None:
            self.bind(kw["model"])
        rate = step_rate(self.strength.budget_rate, max(1, int(state.max_steps)))
        for penalty in self.budgets:
            penalty.rate = rate
        saved = (state.stateful_callbacks or {}).get(DUAL_KEY)
        if state.global_step > 0 and saved is not None:
            self.restore(saved)
        elif state.global_step > 0 and self.budgets:
            logger.warning(
                "KFCCallback: resumed at step %d from a checkpoint without a dual "
                "state; λ_t go on from %s",
                state.global_step,
                self.dual_state()["lam"],
            )

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, **kw: Any
    ) -> None:
        """Make sure the penalty's step pre-hook sits on this optimizer."""
        if self.penalties and kw.get("optimizer") is not None:
            self._hook(kw["optimizer"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Put the dual state into the trainer state a checkpoint will save."""
        if self.penalties:
            if state.stateful_callbacks is None:
                state.stateful_callbacks = {}
            state.stateful_callbacks[DUAL_KEY] = self.dual_state()

    def on_log(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Add ``kfc_penalty`` and λ per task to a training log (and its history)."""
        logs = kw.get("logs")
        if not self.penalties or not logs or "loss" not in logs or not self._steps:
            return
        status = self.status()
        self._sum, self._steps = 0.0, 0
        logs.update(status)
        last = state.log_history[-1] if state.log_history else {}
        if "loss" in last and last.get("step") == state.global_step:
            last.update(status)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Write the states and the dual state into the checkpoint folder."""
        if self.penalties and args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.save(Path(args.output_dir) / folder)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Remove the optimizer hook."""
        if self._handle is not None:
            self._handle.remove()
        self._hooked = self._handle = None

    def status(self) -> dict[str, float]:
        """The mean penalty since the last log, each task's λ (and rise per term)."""
        out = {"kfc_penalty": self._sum / max(self._steps, 1)}
        for penalty, states in self.penalties:
            if isinstance(penalty, BudgetPenalty):
                for st, lam, rise in zip(
                    states, penalty.lams, penalty.rises, strict=True
                ):
                    out[f"kfc_lam/{st.task}"] = lam
                    out[f"kfc_rise/{st.task}"] = rise / terms_per_example(st)
            else:
                for st, lam in zip(states, _lams_of(penalty), strict=True):
                    out[f"kfc_lam/{st.task}"] = lam
        return out

    def dual_state(self) -> dict[str, Any]:
        """λ_t per task (fixed or adapted) and the dual steps taken, JSON-ready."""
        lams: dict[str, float] = {}
        for penalty, states in self.penalties:
            values = (
                penalty.lams
                if isinstance(penalty, BudgetPenalty)
                else _lams_of(penalty)
            )
            lams |= {s.task: float(v) for s, v in zip(states, values, strict=True)}
        return {"lam": lams, "dual_steps": self.dual_steps}

    def restore(self, saved: dict[str, Any]) -> None:
        """Set the budgets' λ_t and the step count from a ``dual_state()``.

        Raises:
            ValueError: a saved state that names other tasks than the budgets'.
        """
        lams = saved.get("lam", {})
        for penalty, states in self.penalties:
            if not isinstance(penalty, BudgetPenalty):
                continue
            missing = [s.task for s in states if s.task not in lams]
            if missing:
                raise ValueError(
                    f"KFCCallback: the checkpoint's dual state has no λ for {missing}"
                )
            penalty.lams = [float(lams[s.task]) for s in states]
        self.dual_steps = int(saved.get("dual_steps", 0))
        logger.info("KFCCallback: resumed λ_t %s after %d steps", lams, self.dual_steps)

    def save(self, directory: str | PathLike[str]) -> Path:
        """Write the states (``consolidation/``) and ``kfc_dual.json`` to ``directory``.

        States already there, kfacel's own, are replaced (``save_model`` into the same
        directory twice).
        """
        directory = Path(directory)
        if self.states:
            cpu = [_state_to(s, torch.device("cpu")) for s in self.states]
            atomic_dir(
                state_dir(directory), lambda tmp: _write_states(tmp, cpu),
                replace=_only_states,
            )  # fmt: skip
        atomic_write_json(directory / DUAL_FILE, self.dual_state(), sort_keys=True)
        return directory

    def _hook(self, optimizer: Any) -> None:
        """Register the penalty's step pre-hook on the innermost torch optimizer."""
        raw = optimizer
        while isinstance(getattr(raw, "optimizer", None), torch.optim.Optimizer):
            raw = raw.optimizer  # accelerate's AcceleratedOptimizer wraps the real one
        if raw is self._hooked:
            return
        if self._handle is not None:
            self._handle.remove()
        self._handle = raw.register_step_pre_hook(self._add_penalty_grad)
        self._hooked = raw

    def _add_penalty_grad(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """``.grad += ∂R/∂θ`` once per applied optimizer step, eq. (P3); the dual step."""
        value = 0.0
        assert self._model is not None  # bound before the first step
        for penalty, _ in self.penalties:
            value += float(penalty.add_grad_(self._model))
            if isinstance(penalty, BudgetPenalty):
                penalty.after_task_step()
        self.dual_steps += 1
        self._sum += value
        self._steps += 1


def _given_states(
    states: Sequence[TaskState] | str | PathLike[str],
) -> tuple[TaskState, ...] | Path:
    """``states`` as a tuple, or the model directory to load them from.

    Raises:
        ValueError: anything but states or a path.
    """
    if isinstance(states, str | PathLike):
        return Path(states)
    if not isinstance(states, Sequence) or not all(
        isinstance(s, TaskState) for s in states
    ):
        raise ValueError(
            "KFCCallback: states= takes a sequence of TaskState or a model directory, "
            f"got {type(states).__name__}"
        )
    return tuple(s for s in states if isinstance(s, TaskState))


def _state_to(state: TaskState, device: torch.device) -> TaskState:
    """``state`` with its anchor and curvature on ``device``."""
    anchor = {k: v.to(device) for k, v in state.anchor.items()}
    return replace(
        state, anchor=anchor, curvature=curvature_to(state.curvature, device)
    )


def _write_states(tmp: Path, states: Sequence[TaskState]) -> None:
    """Write ``states`` in order into the (temporary) consolidation folder ``tmp``."""
    for state in states:
        save_state(tmp, state)  # into tmp/consolidation/
    inner = state_dir(tmp)
    for path in inner.iterdir():
        path.rename(tmp / path.name)
    inner.rmdir()


def _only_states(directory: Path) -> bool:
    """Whether ``directory`` holds only consolidation states (kfacel's own files)."""
    return all(
        p.is_file() and p.suffix in (".json", ".safetensors") and p.name[:2].isdigit()
        for p in directory.iterdir()
    )


def _lams_of(penalty: Any) -> list[float]:
    """The λ of each term of a fixed-λ penalty (KFAC, EWC, L2)."""
    terms = getattr(penalty, "terms", ())
    return [float(t[-1]) for t in terms]
