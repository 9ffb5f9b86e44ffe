"""Diagonal EWC: ``R(θ) = ½ Σ_t λ_t Σ_j (F_t,jj + δ)(θ_j − θ*_t,j)²``, eq. (P1).

Reference: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural
networks", PNAS, eq. 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Self

import torch
from torch import Tensor, nn

from kfacel.penalties._terms import add_grad, check_anchor, zero_like_model
from kfacel.types import ParamDict


@dataclass(frozen=True)
class DiagonalEWCPenalty:
    """One ``(anchor, diagonal Fisher, λ)`` term per finished task, damping ``δ``."""

    terms: tuple[tuple[ParamDict, Mapping[str, Tensor], float], ...] = ()
    damping: float = 0.0

    def __post_init__(self) -> None:
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")

    @property
    def num_tasks(self) -> int:
        """Number of finished tasks."""
        return len(self.terms)

    def add_task(
        self, anchor: ParamDict, curvature: Mapping[str, Tensor], *, lam: float
    ) -> Self:
        """A new penalty with one more term; ``curvature`` maps names to ``F_jj``."""
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        for name, f in curvature.items():
            if name in anchor and f.shape != anchor[name].shape:
                raise ValueError(
                    f"{name}: Fisher {tuple(f.shape)} vs anchor {tuple(anchor[name].shape)}"
                )
        return replace(self, terms=(*self.terms, (anchor, curvature, float(lam))))

    def __call__(self, model: nn.Module) -> Tensor:
        """``R(θ)``, differentiable."""
        params = dict(model.named_parameters())
        total = zero_like_model(model)
        for anchor, fisher, lam in self.terms:
            check_anchor(anchor, params, fisher)
            for name, f in fisher.items():
                d = params[name] - anchor[name]
                total = total + lam * ((f + self.damping) * d * d).sum()
        return 0.5 * total

    def add_grad_(self, model: nn.Module) -> Tensor:
        """Add ``λ (F + δ) ⊙ (θ − θ*)`` to ``.grad``; return ``R(θ)``."""
        return self.add_scaled_grad_(model, 1.0)

    def add_scaled_grad_(self, model: nn.Module, scale: float) -> Tensor:
        """Add ``scale · ∂R/∂θ`` to ``.grad`` (nothing at 0); return ``R(θ)`` unscaled."""
        params = dict(model.named_parameters())
        total = zero_like_model(model)
        with torch.no_grad():
            for anchor, fisher, lam in self.terms:
                for name, f in fisher.items():
                    total += _term_grad_(
                        params[name], anchor[name], f, lam, self, scale
                    )
        return total


def _term_grad_(
    p: Tensor, a: Tensor, f: Tensor, lam: float, pen: DiagonalEWCPenalty, scale: float
) -> Tensor:
    """One parameter's ``½ λ Σ (F + δ) Δ²``, adding ``scale`` times its gradient.

    A table (2-D) of which only some rows moved since the anchor (an embedding: rows of
    tokens the new task has not used) is read on those rows only; the others add 0.
    """
    if p.ndim == 2 and len(p) > 1:
        rows = torch.nonzero(p.detach().ne(a).any(dim=1)).flatten()
        if len(rows) < len(p):
            d = p[rows] - a[rows]
            g = lam * (f[rows] + pen.damping) * d
            if scale != 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.index_add_(0, rows, g.to(p.grad.dtype), alpha=scale)
            return 0.5 * (g * d).sum()
    d = p - a
    g = lam * (f + pen.damping) * d
    add_grad(p, g, scale)
    return 0.5 * (g * d).sum()
