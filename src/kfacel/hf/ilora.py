"""I-LoRA: a fast and a slow learner, interpolated, with replay of old examples.

A baseline beside KFC that **needs old data** (Ren et al. 2024, "Analyzing and Reducing
Catastrophic Forgetting in Parameter Efficient Tuning", eqs. 3–5). The fast learner θ_w
(the model being trained) fits the new task's batch and a batch drawn from a memory of
earlier tasks' rows; a slow learner θ_l follows it by exponential moving average after
every optimizer step,

    θ_l ← μ θ_l + (1 − μ) θ_w,

and a consistency term keeps the fast learner's hidden states on the memory rows close to
the slow learner's:

    L = L_task(θ_w; new) + L_task(θ_w; memory) + γ · MSE(h_w(memory), h_l(memory)),

with ``h`` the last hidden state over the non-padding positions. The slow learner is what
is kept: when training ends its weights are copied into the model. Memory rows without
``labels`` add the consistency term only (an earlier task's head that the model no longer
carries). The moving average covers every trainable parameter (LoRA adapters and any
trained head); frozen weights are shared.
"""

from __future__ import annotations

import random
import typing
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from kfacel.training.ilora import check_rates, frozen_copy

__all__ = ["ILoRATrainer"]


class ILoRATrainer(Trainer):
    """A ``Trainer`` that trains with I-LoRA (module doc); other arguments are Trainer's.

    Args:
        memory: rows of earlier tasks (the Trainer's row format) to replay.
        ema: μ, the slow learner's moving-average weight (the paper's 0.99).
        consistency: γ of the hidden-state consistency term.
        memory_batch: memory rows a step (default: the per-device batch size).
        seed: the memory sampler's seed.

    Raises:
        ValueError: for an empty memory, μ outside [0, 1), or γ < 0.
    """

    def __init__(
        self,
        *args: Any,
        memory: Sequence[dict[str, Any]],
        ema: float = 0.99,
        consistency: float = 1.0,
        memory_batch: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if not memory:
            raise ValueError("memory: I-LoRA replays earlier rows; give at least one")
        check_rates(ema, consistency)
        super().__init__(*args, **kwargs)
        self.memory = list(memory)
        self.consistency = consistency
        self.memory_batch = memory_batch or self.args.per_device_train_batch_size
        self._rng = random.Random(seed)
        self.slow = frozen_copy(typing.cast(nn.Module, self.model))
        self.add_callback(_SlowLearner(self, ema))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The task loss on the new batch plus the memory batch's loss and consistency."""
        new: Any = super().compute_loss(
            model, inputs, return_outputs, num_items_in_batch
        )
        loss: torch.Tensor = new[0] if return_outputs else new
        rows = self._rng.sample(self.memory, min(self.memory_batch, len(self.memory)))
        batch = self._prepare_inputs(self.data_collator(rows))
        labels = batch.pop("labels", None)
        out = model(**batch, labels=labels, output_hidden_states=True)
        if labels is not None:
            loss = loss + out.loss
        if self.consistency:
            with torch.no_grad():
                slow = self.slow(**batch, output_hidden_states=True)
            loss = loss + self.consistency * _masked_mse(
                out.hidden_states[-1],
                slow.hidden_states[-1],
                batch.get("attention_mask"),
            )
        return (loss, new[1]) if return_outputs else loss


class _SlowLearner(TrainerCallback):
    """The slow learner's moving average after each step; its weights kept at the end."""

    def __init__(self, trainer: ILoRATrainer, ema: float) -> None:
        self.trainer, self.ema = trainer, ema

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        slow = dict(self.trainer.slow.named_parameters())
        model = typing.cast(nn.Module, self.trainer.model)
        return [(slow[n], p) for n, p in model.named_parameters() if p.requires_grad]

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """θ_l ← μ θ_l + (1 − μ) θ_w."""
        with torch.no_grad():
            for s, w in self._pairs():
                s.lerp_(w.to(s.device), 1.0 - self.ema)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """The model becomes the slow learner."""
        with torch.no_grad():
            for s, w in self._pairs():
                w.copy_(s)


def _masked_mse(
    fast: torch.Tensor, slow: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared difference of two ``[N, S, H]`` hidden states over unmasked positions."""
    diff = (fast - slow).pow(2).mean(-1)
    if mask is None:
        return diff.mean()
    keep = mask.to(diff.dtype)
    return (diff * keep).sum() / keep.sum().clamp(min=1.0)
