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

import typing
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

__all__ = ["OLoRACallback", "lora_subspaces", "orthogonality", "stack_subspaces"]


def lora_subspaces(
    model: nn.Module, adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """Each LoRA layer's ``A`` of ``adapter`` ([r, in], detached), by the layer's name.

    The name is the layer's path without peft's wrapper (``base_model.model.``), so the
    subspaces of a merged and re-wrapped model (or sub-model) match by name.

    Raises:
        ValueError: when ``model`` has no LoRA layer with that adapter.
    """
    out = {name: a.detach().clone() for name, a in _a_weights(model, adapter).items()}
    if not out:
        raise ValueError(f"the model has no LoRA layer with adapter {adapter!r}")
    return out


def _a_weights(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """Each LoRA layer's ``A`` parameter of ``adapter``, by the layer's plain name."""
    out = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
            out[_plain_name(name)] = typing.cast(nn.Parameter, lora_a[adapter].weight)
    return out


def stack_subspaces(
    *subspaces: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Several tasks' subspaces as one: the ``A`` of each layer stacked by rows."""
    out: dict[str, list[torch.Tensor]] = {}
    for s in subspaces:
        for name, a in s.items():
            out.setdefault(name, []).append(a)
    return {name: torch.cat(parts) for name, parts in out.items()}


def orthogonality(
    model: nn.Module, earlier: Mapping[str, torch.Tensor], adapter: str = "default"
) -> float:
    """``Σ_layers ‖A_earlier A_tᵀ‖²_F`` of the model's current adapter (O-LoRA's L_orth / λ)."""
    current = lora_subspaces(model, adapter)
    total = 0.0
    for name, a in current.items():
        if name in earlier:
            total += float((earlier[name].to(a) @ a.T).pow(2).sum())
    return total


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
        lam: float = 0.5,
        adapter: str = "default",
    ) -> None:
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.earlier = dict(earlier)
        self.lam = lam
        self.adapter = adapter
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []

    def bind(self, model: nn.Module) -> None:
        """Pair each earlier subspace with the new adapter's ``A`` of the same layer."""
        params = _a_weights(model, self.adapter)
        self._pairs = []
        for name, a in self.earlier.items():
            if name not in params:
                raise ValueError(
                    f"O-LoRA: layer {name} has no adapter {self.adapter!r}"
                )
            p = params[name]
            if a.shape[1] != p.shape[1]:
                raise ValueError(
                    f"O-LoRA: layer {name}: earlier A reads {a.shape[1]} inputs, "
                    f"the adapter {p.shape[1]}"
                )
            self._pairs.append((p, (a.T @ a).to(p)))  # A_iᵀ A_i, [in, in]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Bind to the Trainer's model."""
        if kw.get("model") is not None:
            self.bind(kw["model"])

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, **kw: Any
    ) -> None:
        """``A_t.grad += 2 λ A_t (Σ_i A_iᵀ A_i)`` for every paired layer."""
        with torch.no_grad():
            for p, gram in self._pairs:
                if not p.requires_grad:
                    continue
                extra = (2.0 * self.lam) * (p @ gram)
                p.grad = extra if p.grad is None else p.grad.add_(extra)


def _plain_name(name: str) -> str:
    """A module path without peft's ``base_model.model.`` wrapper (at any depth)."""
    return name.replace("base_model.model.", "")
