"""Continue training a linker on a new task while protecting its consolidated tasks.

The one way kfacel updates a model (``kfacel train --init``, the experiment cells of
tiers 2 and 3, the quickstart): the penalty of eq. (P1) is built from the consolidation
states alone (one term per finished task, each with its own λ_t), optionally with
discriminative learning rates (LRC) and experience replay, and the linker is trained on
the new task. No old data is read, except by replay, which is a reference method.
``save_linker(..., states=...)`` then carries the states forward with the new weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kfacel.consolidation import TaskState, build_penalty
from kfacel.data.records import LinkingExample
from kfacel.data.tasks import Task
from kfacel.training.continual import discriminative_lr_groups
from kfacel.training.pipeline import Linker, fit_task
from kfacel.training.trainer import Replay, TrainLog, TrainSettings

PENALTIES = ("none", "l2", "ewc", "kfac")
"""Penalties an update can use: none, L2 to the anchor, diagonal EWC, KFC."""


@dataclass(frozen=True)
class Protection:
    """How an update protects the consolidated tasks.

    Attributes:
        penalty: ``none``, ``l2``, ``ewc`` or ``kfac`` (the states' method must match).
        lam: λ for every consolidated task without its own entry in ``lam_per_task``.
        lam_per_task: λ_t by task name.
        damping: δ added to every curvature where it is used (prior precision).
        lrc: discriminative learning rates, η_ℓ = η_{ℓ+1}·γ (None: off).
        replay: earlier tasks' queries to replay (None: off; needs old data).
    """

    penalty: str = "none"
    lam: float | None = None
    lam_per_task: Mapping[str, float] = field(default_factory=dict)
    damping: float = 0.0
    lrc: float | None = None
    replay: Replay[LinkingExample] | None = None

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming a value out of its range."""
        if self.penalty not in PENALTIES:
            raise ValueError(
                f"penalty must be one of {PENALTIES}, got {self.penalty!r}"
            )
        for task, lam in [(None, self.lam), *self.lam_per_task.items()]:
            if lam is not None and not (math.isfinite(lam) and lam >= 0):
                name = "lam" if task is None else f"lam_per_task {task}="
                raise ValueError(f"{name} must be a finite λ ≥ 0, got {lam}")
        if not (math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {self.damping}")
        if self.lrc is not None and not 0 < self.lrc <= 1:
            raise ValueError(f"lrc must be a factor in (0, 1], got {self.lrc}")

    def lams(self, tasks: Sequence[str]) -> list[float]:
        """λ_t for each consolidated task, in order (all 0 without a penalty).

        Raises:
            ValueError: a penalty without consolidated tasks, ``lam_per_task`` naming a
                task that is not consolidated, or a task with no λ.
        """
        if self.penalty == "none":
            return [0.0] * len(tasks)
        if not tasks:
            raise ValueError(
                f"penalty {self.penalty!r} needs a model with a consolidated task "
                "(run `kfacel consolidate` first)"
            )
        unknown = sorted(set(self.lam_per_task) - set(tasks))
        if unknown:
            raise ValueError(
                f"λ given for {unknown}; consolidated tasks are {list(tasks)}"
            )
        missing = [t for t in tasks if t not in self.lam_per_task and self.lam is None]
        if missing:
            raise ValueError(f"no λ for consolidated task(s) {missing}")
        return [float(self.lam_per_task.get(t, self.lam)) for t in tasks]  # type: ignore[arg-type]

    def to_json(self, tasks: Sequence[str]) -> dict[str, Any]:
        """What a model directory records as ``continual``."""
        return {
            "penalty": self.penalty,
            "lam": dict(zip(tasks, self.lams(tasks), strict=True)),
            "damping": self.damping,
            "lrc": self.lrc,
            "replay_queries": len(self.replay.items) if self.replay else 0,
        }


def update_linker(
    linker: Linker,
    task: Task,
    states: Sequence[TaskState],
    settings: TrainSettings,
    protection: Protection,
    *,
    progress: bool = False,
) -> TrainLog:
    """Train ``linker`` on ``task`` with the penalty of ``states``; reads no old data.

    Args:
        linker: the model to continue from (trained on the consolidated tasks).
        task: the new task.
        states: consolidation states of the earlier tasks (``load_state``).
        settings: the training settings.
        protection: penalty, λ per task, damping, LRC and replay.
        progress: progress bars.

    Returns:
        The training log; ``linker.meta`` records the task in ``history`` and the
        settings under ``training`` and ``continual``.
    """
    names = [s.task for s in states]
    penalty = build_penalty(
        protection.penalty, states, protection.lams(names), damping=protection.damping
    )
    groups = None
    if protection.lrc is not None:
        groups = discriminative_lr_groups(linker.model, settings.lr, protection.lrc)
    log = fit_task(
        linker,
        task,
        settings,
        penalty=penalty,
        lr_groups=groups,
        replay=protection.replay,
        progress=progress,
    )
    linker.meta |= {
        "history": [*linker.meta.get("history", []), task.name],
        "training": settings.to_json(),
        "continual": protection.to_json(names),
    }
    return log
