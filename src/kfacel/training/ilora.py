"""I-LoRA on the ranker: a fast and a slow learner, interpolated, with replay of old queries.

A baseline beside KFC that **needs old data** (Ren et al. 2024, "Analyzing and Reducing
Catastrophic Forgetting in Parameter Efficient Tuning", eqs. 3–5); ``kfacel.hf.ilora``
is the same method for a Hugging Face ``Trainer``. The fast learner θ_w (the ranker
being trained) fits the new task's batch and, each step, a batch of the memory (earlier
tasks' queries); a slow learner θ_l follows it by exponential moving average after
every applied step,

    θ_l ← μ θ_l + (1 − μ) θ_w,                                              (I1)

and a consistency term keeps the fast learner's outputs on the memory batch close to
the slow learner's:

    L = L_task(θ_w; new) + L_task(θ_w; memory) + γ · MSE(z_w(memory), z_l(memory)).  (I2)

The paper's ``z`` is the language model's last hidden state; a ranker's output is its
candidate scores, so ``z`` here is the logits ``[N, C]`` of the memory's queries. The
slow learner is what is kept (``finish``). The moving average covers every trainable
parameter (LoRA adapters and the scorer, or every weight of a fully trained ranker).

It plugs into the trainer as a penalty does: ``add_grad_`` adds the gradient of eq. I2's
memory terms (a forward and backward on one memory batch), ``after_task_step`` applies
eq. I1.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kfacel.training.trainer import _cycle

DEFAULT_ILORA_EMA = 0.99
"""μ of eq. I1 (the paper's)."""
DEFAULT_ILORA_CONSISTENCY = 1.0
"""γ of eq. I2."""


class SlowLearner:
    """Eqs. I1–I2 for ``model`` over ``memory`` batches (module doc).

    Args:
        model: the ranker that trains (the fast learner); the slow learner starts as a
            copy of it.
        memory: ``Batch``es of earlier tasks' queries, cycled in a seeded order.
        ema: μ of eq. I1, in [0, 1).
        consistency: γ of eq. I2, ≥ 0.
        seed: the memory order's seed.

    Raises:
        ValueError: for an empty memory, μ outside [0, 1) or γ < 0.
    """

    num_tasks = 1

    def __init__(
        self,
        model: nn.Module,
        memory: Sequence[Any],
        *,
        ema: float = DEFAULT_ILORA_EMA,
        consistency: float = DEFAULT_ILORA_CONSISTENCY,
        seed: int = 0,
    ) -> None:
        if not memory:
            raise ValueError("I-LoRA replays earlier queries; the memory is empty")
        check_rates(ema, consistency)
        self.model, self.ema, self.consistency = model, ema, consistency
        self.slow = frozen_copy(model)
        self._batches = _cycle(list(memory), torch.Generator().manual_seed(seed))

    def _terms(self, model: nn.Module) -> Tensor:
        """Eq. I2's memory terms on the next memory batch, differentiable."""
        device = next(model.parameters()).device
        batch = next(self._batches).to(device)
        self.slow.to(device)
        logits = model(batch).float()
        value = F.cross_entropy(logits, batch.labels)
        if self.consistency:
            with torch.no_grad():
                target = self.slow(batch).float()
            value = value + self.consistency * F.mse_loss(logits, target)
        return value

    def __call__(self, model: nn.Module) -> Tensor:
        """Eq. I2's memory terms on the next memory batch, differentiable."""
        return self._terms(model)

    def add_grad_(self, model: nn.Module) -> Tensor:
        """Add the memory terms' gradient to ``.grad``; return their value detached."""
        with torch.enable_grad():
            value = self._terms(model)
            value.backward()
        return value.detach()

    @torch.no_grad()
    def after_task_step(self) -> None:
        """Eq. I1: θ_l ← μ θ_l + (1 − μ) θ_w over the trainable parameters."""
        for s, w in self._pairs():
            s.lerp_(w.to(s.device), 1.0 - self.ema)

    @torch.no_grad()
    def finish(self) -> None:
        """The model becomes the slow learner."""
        for s, w in self._pairs():
            w.copy_(s.to(w.device))

    def _pairs(self) -> list[tuple[Tensor, Tensor]]:
        slow = dict(self.slow.named_parameters())
        return [
            (slow[n], p) for n, p in self.model.named_parameters() if p.requires_grad
        ]


def check_rates(ema: float, consistency: float) -> None:
    """Refuse μ outside [0, 1) (eq. I1) or γ < 0 (eq. I2), naming the value."""
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    if not consistency >= 0:
        raise ValueError(f"consistency must be >= 0, got {consistency}")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters take no gradient."""
    slow = copy.deepcopy(model).eval()
    for p in slow.parameters():
        p.requires_grad_(False)
    return slow
