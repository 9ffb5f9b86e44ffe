"""O-LoRA: each task's LoRA adapter learns in a subspace orthogonal to earlier tasks'.

A baseline beside KFC for LoRA fine-tuning without old data (Wang et al. 2023,
"Orthogonal Subspace Learning for Language Model Continual Learning", eq. 4). A LoRA
update of a layer is ``ΔW = B A`` (peft's ``lora_B`` [out, r] and ``lora_A`` [r, in]); the
rows of ``A`` span the input directions the update reads. Task t trains a new adapter
``(A_t, B_t)`` while the earlier ones stay fixed (here: merged into the base weights, which
gives the same function), and adds

    L_orth = λ Σ_{i<t} Σ_layers ‖A_i A_tᵀ‖²_F

to the task loss, so the new update reads directions the earlier updates did not.
Its gradient is ``∂L_orth/∂A_t = 2 λ Σ_i A_t A_iᵀ A_i``, added in closed form right before
each optimizer step (after clipping, as ``KFCCallback`` adds the penalty's gradient), so
it composes with any ``transformers.Trainer``:

    earlier = lora_subspaces(model)                  # task A's adapter, after training
    base = model.merge_and_unload()                  # A's update kept in the weights
    model = peft.get_peft_model(base, lora_config)   # a new adapter for task B
    Trainer(..., model=model, callbacks=[OLoRACallback(earlier, lam=0.5)]).train()

For the next task, stack the subspaces: ``stack_subspaces(earlier, lora_subspaces(model))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from kfacel.penalties.olora import (
    DEFAULT_OLORA_LAM,
    OrthogonalSubspaces,
    lora_subspaces,
    stack_subspaces,
)

__all__ = ["OLoRACallback", "lora_subspaces", "orthogonality", "stack_subspaces"]


def orthogonality(
    model: nn.Module, earlier: Mapping[str, torch.Tensor], adapter: str = "default"
) -> float:
    """``Σ_layers ‖A_earlier A_tᵀ‖²_F`` of the model's current adapter (O-LoRA's L_orth / λ)."""
    current = lora_subspaces(model, adapter)
    shared = {n: a for n, a in earlier.items() if n in current}
    with torch.no_grad():
        return float(OrthogonalSubspaces(shared, 1.0, adapter=adapter)(model))


class OLoRACallback(TrainerCallback):
    """Adds O-LoRA's orthogonality gradient to the new adapter's ``A`` (module doc).

    Args:
        earlier: the earlier tasks' subspaces (``lora_subspaces``, ``stack_subspaces``).
        lam: λ of L_orth (the paper's λ₁; 0.5 in its experiments).
        adapter: the peft adapter being trained.

    Raises:
        ValueError: for a negative λ, or (when training begins) an earlier subspace whose
            layer the model lacks or whose input width differs.
    """

    def __init__(
        self,
        earlier: Mapping[str, torch.Tensor],
        *,
        lam: float = DEFAULT_OLORA_LAM,
        adapter: str = "default",
    ) -> None:
        self.penalty = OrthogonalSubspaces(earlier, lam, adapter=adapter)
        self._model: nn.Module | None = None

    def bind(self, model: nn.Module) -> None:
        """Check each earlier subspace against the model's adapter and keep the model."""
        self.penalty.pairs(model)
        self._model = model

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Bind to the Trainer's model."""
        if kw.get("model") is not None:
            self.bind(kw["model"])

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, **kw: Any
    ) -> None:
        """``A_t.grad += 2 λ A_t (Σ_i A_iᵀ A_i)`` for every paired layer (eq. O2)."""
        if self._model is not None:
            self.penalty.add_grad_(self._model)
