"""O-LoRA's orthogonality penalty: a new LoRA adapter reads directions earlier ones did not.

A baseline beside KFC for LoRA fine-tuning without old data (Wang et al. 2023,
"Orthogonal Subspace Learning for Language Model Continual Learning", eq. 4). A LoRA
update of a layer is ``ΔW = B A`` (peft's ``lora_B`` [out, r] and ``lora_A`` [r, in]); the
rows of ``A`` span the input directions the update reads. Task t trains a new adapter
``(A_t, B_t)`` while the earlier ones stay fixed (here: merged into the base weights,
which gives the same function, ``start_new_adapter``), and adds

    L_orth = λ Σ_{i<t} Σ_layers ‖A_i A_tᵀ‖²_F                                (O1)

to the task loss, so the new update reads directions the earlier updates did not. Its
gradient is ``∂L_orth/∂A_t = 2 λ A_t Σ_i A_iᵀ A_i`` (O2), which ``add_grad_`` adds in
closed form as the other penalties add theirs. Layers are found by peft's attribute
names (``lora_A``, ``get_delta_weight``, ``reset_lora_parameters``), so this module
imports no peft.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

_Pair = tuple[nn.Parameter, Tensor, Tensor]
"""The new adapter's ``A_t``, the earlier ``A_i`` of its layer and ``A_iᵀ A_i``."""

DEFAULT_OLORA_LAM = 0.5
"""λ of eq. O1 (the paper's λ₁ in its experiments)."""


def _lora_layers(model: nn.Module, adapter: str) -> Iterator[tuple[str, nn.Module]]:
    """Each LoRA layer holding ``adapter``, by its path without peft's wrapper."""
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
            yield name.replace("base_model.model.", ""), module


def lora_a_weights(
    model: nn.Module, adapter: str = "default"
) -> dict[str, nn.Parameter]:
    """Each LoRA layer's ``A`` parameter of ``adapter``, by the layer's plain name.

    The name is the layer's path without peft's wrapper (``base_model.model.``), so the
    subspaces of a merged and re-wrapped model (or sub-model) match by name.
    """
    out = {}
    for name, module in _lora_layers(model, adapter):
        lora_a = typing.cast(nn.ModuleDict, module.lora_A)
        out[name] = typing.cast(nn.Parameter, lora_a[adapter].weight)
    return out


def lora_subspaces(model: nn.Module, adapter: str = "default") -> dict[str, Tensor]:
    """Each LoRA layer's ``A`` of ``adapter`` ([r, in], detached), by plain name.

    Raises:
        ValueError: when ``model`` has no LoRA layer with that adapter.
    """
    out = {n: a.detach().clone() for n, a in lora_a_weights(model, adapter).items()}
    if not out:
        raise ValueError(f"the model has no LoRA layer with adapter {adapter!r}")
    return out


def stack_subspaces(*subspaces: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Several tasks' subspaces as one: the ``A`` of each layer stacked by rows."""
    out: dict[str, list[Tensor]] = {}
    for s in subspaces:
        for name, a in s.items():
            out.setdefault(name, []).append(a)
    return {name: torch.cat(parts) for name, parts in out.items()}


@torch.no_grad()
def start_new_adapter(model: nn.Module, adapter: str = "default") -> dict[str, Tensor]:
    """Merge each LoRA layer's ``adapter`` into its base weight and start a fresh one.

    The function is unchanged (the fresh ``B`` is zero); returns the old ``A``s
    (``lora_subspaces``), the earlier task's subspace for eq. O1.

    Raises:
        ValueError: when ``model`` has no LoRA layer with that adapter.
    """
    earlier = lora_subspaces(model, adapter)
    for _, module in _lora_layers(model, adapter):
        base = module.get_base_layer()  # type: ignore[operator]
        base.weight += module.get_delta_weight(adapter)  # type: ignore[operator]
        module.reset_lora_parameters(adapter, True)  # type: ignore[operator]
    return earlier


class OrthogonalSubspaces:
    """Eq. O1 against fixed earlier subspaces; ``add_grad_`` adds eq. O2.

    Args:
        earlier: the earlier tasks' ``A`` by layer (``lora_subspaces``,
            ``stack_subspaces``).
        lam: λ of eq. O1.
        adapter: the peft adapter being trained.

    Raises:
        ValueError: for a negative λ, or (when applied) an earlier subspace whose layer
            the model lacks or whose input width differs.
    """

    num_tasks = 1

    def __init__(
        self, earlier: Mapping[str, Tensor], lam: float, *, adapter: str = "default"
    ) -> None:
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.earlier = dict(earlier)
        self.lam = lam
        self.adapter = adapter
        self._bound: tuple[nn.Module, list[_Pair]] | None = None

    def pairs(self, model: nn.Module) -> list[_Pair]:
        """Each earlier subspace (and its Gram ``A_iᵀ A_i``) with the new adapter's ``A``.

        Found once per model and device (not redone every step).
        """
        if self._bound is not None and self._bound[0] is model:
            bound = self._bound[1]
            if all(a.device == p.device and a.dtype == p.dtype for p, a, _ in bound):
                return bound
        params = lora_a_weights(model, self.adapter)
        out = []
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
            a = a.to(p)
            out.append((p, a, a.T @ a))
        self._bound = (model, out)
        return out

    def __call__(self, model: nn.Module) -> Tensor:
        """Eq. O1 at the model's adapters, differentiable."""
        total = next(model.parameters()).new_zeros(())
        for p, a, _ in self.pairs(model):
            total = total + (a @ p.T).pow(2).sum()
        return self.lam * total

    @torch.no_grad()
    def add_grad_(self, model: nn.Module) -> Tensor:
        """``A_t.grad += 2 λ A_t Σ_i A_iᵀ A_i`` (eq. O2); returns eq. O1 detached."""
        total = next(model.parameters()).new_zeros(())
        for p, a, gram in self.pairs(model):
            total += (a @ p.T).pow(2).sum()
            if p.requires_grad:
                extra = (2.0 * self.lam) * (p @ gram)
                p.grad = extra if p.grad is None else p.grad.add_(extra)
        return self.lam * total
