"""KFCTrainer: a ``transformers.Trainer`` with a :class:`KFCCallback`, a convenience.

Everything the penalty does is the callback's (``kfacel.hf.callback``): the closed-form
gradient once per applied optimizer step, a budget's dual step, the logs and the
checkpoints. The trainer adds the callback first (so reporting integrations record its
``kfc_*`` logs), and ``save_model`` writes the states and the dual state beside the
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from transformers import Trainer

from kfacel.consolidation import TaskState
from kfacel.hf.callback import KFCCallback
from kfacel.penalties import Penalty
from kfacel.penalties.strength import Damping, Strength

__all__ = ["KFCTrainer"]

_RENAMED = {
    "lam": "strength=Strength(lam=...) (or lam_per_task by task name)",
    "budget": "strength=Strength(budget=...) (or budget_per_task by task name)",
    "budget_rate": "strength=Strength(budget_rate=...), now per run",
}


class KFCTrainer(Trainer):
    """A ``transformers.Trainer`` that adds the KFC / EWC / L2 penalty of finished tasks.

    ``KFCTrainer(..., states=s, strength=..., damping=...)`` is ``Trainer(...,
    callbacks=[KFCCallback(s, strength=..., damping=...)])`` plus ``save_model``
    writing the states and λ_t. With ``states=()`` it is a plain Trainer.

    Args:
        states, strength, damping, damping_kind, strict: as :class:`KFCCallback` (the
            defaults are ``kfacel train``'s: the budget ε = 0.005 at rate 3.9 per run,
            δ = 1e-6 factored for ``kfac``).
        **kwargs: passed to ``transformers.Trainer``.

    Raises:
        ValueError: as :class:`KFCCallback`; no ``model=``.
        TypeError: ``lam=``, ``budget=`` or ``budget_rate=`` (give ``strength=``).
    """

    def __init__(
        self,
        *args: Any,
        states: Sequence[TaskState] | str | PathLike[str] = (),
        strength: Strength | None = None,
        damping: Damping | float | None = None,
        damping_kind: str | None = None,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        for old, new in _RENAMED.items():
            if old in kwargs:
                raise TypeError(f"KFCTrainer: {old}= is given as {new}")
        callback = KFCCallback(
            states, strength=strength, damping=damping, damping_kind=damping_kind,
            strict=strict,
        )  # fmt: skip
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError("KFCTrainer needs model=")
        callback.bind(self.model)
        self.callback_handler.callbacks.insert(0, callback)
        self.kfc = callback

    @property
    def kfc_states(self) -> tuple[TaskState, ...]:
        """The consolidated tasks penalized, on the model's device."""
        return self.kfc.states

    @property
    def kfc_penalties(self) -> list[tuple[Penalty, tuple[TaskState, ...]]]:
        """One penalty per method with its states."""
        return self.kfc.penalties

    def kfc_status(self) -> dict[str, float]:
        """The mean penalty since the last log and each task's λ (:class:`KFCCallback`)."""
        return self.kfc.status()

    def save_model(
        self, output_dir: str | None = None, _internal_call: bool = False
    ) -> None:
        """``Trainer.save_model``, then the states and ``kfc_dual.json`` beside it.

        A checkpoint gets them from the callback's ``on_save``.
        """
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.kfc.penalties and self.args.should_save:
            self.kfc.save(Path(output_dir or str(self.args.output_dir)))
