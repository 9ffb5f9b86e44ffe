"""L2 to the old weights: ``R(θ) = ½ Σ_t λ_t ‖θ − θ*_t‖²``, eq. (P1) with ``F_t = I``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Self

import torch
from torch import Tensor, nn

from kfacel.penalties._terms import add_grad, check_anchor, zero_like_model
from kfacel.types import ParamDict


@dataclass(frozen=True)
class L2Penalty:
    """Isotropic pull towards each finished task's weights."""

    terms: tuple[tuple[ParamDict, float], ...] = ()

    @property
    def num_tasks(self) -> int:
        """Number of finished tasks."""
        return len(self.terms)

    def add_task(
        self, anchor: ParamDict, curvature: object = None, *, lam: float
    ) -> Self:
        """A new penalty with one more term (``curvature`` is unused: ``F = I``)."""
        del curvature
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        return replace(self, terms=(*self.terms, (anchor, float(lam))))

    def __call__(self, model: nn.Module) -> Tensor:
        """``R(θ)``, differentiable."""
        params = dict(model.named_parameters())
        total = zero_like_model(model)
        for anchor, lam in self.terms:
            check_anchor(anchor, params, anchor)
            for name, a in anchor.items():
                total = total + lam * (params[name] - a).pow(2).sum()
        return 0.5 * total

    def add_grad_(self, model: nn.Module) -> Tensor:
        """Add ``λ (θ − θ*)`` to ``.grad``; return ``R(θ)``."""
        return self.add_scaled_grad_(model, 1.0)

    def add_scaled_grad_(self, model: nn.Module, scale: float) -> Tensor:
        """Add ``scale · ∂R/∂θ`` to ``.grad`` (nothing at 0); return ``R(θ)`` unscaled."""
        params = dict(model.named_parameters())
        total = zero_like_model(model)
        with torch.no_grad():
            for anchor, lam in self.terms:
                for name, a in anchor.items():
                    d = params[name] - a
                    add_grad(params[name], lam * d, scale)
                    total += 0.5 * lam * d.pow(2).sum()
        return total
