"""KFC: EWC with a Kronecker-factored Fisher, eq. (P1) with (P2)–(P3) per layer.

``R(θ) = ½ Σ_t λ_t Σ_layers [vec(Δ)ᵀ (G ⊗ A) vec(Δ) + δ ‖Δ‖²]`` plus, for parameters the
Fisher holds a diagonal for (``uncovered="diagonal"``), ``Σ_j (F_jj + δ) Δ_j²``. Each layer
costs two matrix products, ``G Δ A``; no Kronecker product is formed and nothing is
inverted. An embedding's gradient touches only the rows that moved; rows with zero
token frequency add only damping.
``damping_kind="factored"`` damps the factors instead, eq. (P4).

References: Ritter, Botev & Barber 2018, "Online structured Laplace approximations for
overcoming catastrophic forgetting", NeurIPS, eq. 8; McInerney et al. 2021, eq. 6.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Self

import torch
from torch import Tensor, nn

from kfacel.curvature.factors import (
    KFACFisher,
    KroneckerFactors,
    factored_damping,
    right,
)
from kfacel.curvature.layers import LayerKind
from kfacel.penalties._terms import add_grad, check_anchor, zero_like_model
from kfacel.types import ParamDict

DAMPING_KINDS = ("uniform", "factored")
"""How δ enters a K-FAC penalty: ``δ I`` on each block (P1), or on each factor (P4)."""


def check_damping_kind(kind: str, method: str) -> None:
    """Raise ``ValueError`` for an unknown ``kind``, or ``factored`` for a non-``kfac`` method."""
    if kind not in DAMPING_KINDS:
        raise ValueError(f"damping_kind must be one of {DAMPING_KINDS}, got {kind!r}")
    if kind != "uniform" and method != "kfac":
        raise ValueError(
            f"damping_kind {kind!r} damps Kronecker factors: it needs penalty kfac, "
            f"not {method!r}"
        )


@dataclass(frozen=True)
class KFACPenalty:
    """One ``(anchor, K-FAC Fisher, λ)`` term per finished task, damping ``δ``.

    ``damping_kind``: ``uniform`` adds ``δ I`` to each block (P1); ``factored`` damps
    each factor instead (P4), once, when a task is added.
    """

    terms: tuple[tuple[ParamDict, KFACFisher, float], ...] = ()
    damping: float = 0.0
    damping_kind: str = "uniform"

    def __post_init__(self) -> None:
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        check_damping_kind(self.damping_kind, "kfac")

    @property
    def _uniform(self) -> float:
        """The δ added at use: 0 when the factors were damped by (P4)."""
        return self.damping if self.damping_kind == "uniform" else 0.0

    @property
    def num_tasks(self) -> int:
        """Number of finished tasks."""
        return len(self.terms)

    def add_task(self, anchor: ParamDict, curvature: KFACFisher, *, lam: float) -> Self:
        """A new penalty with one more term."""
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if not isinstance(curvature, KFACFisher):
            raise TypeError(
                f"KFACPenalty needs a KFACFisher, got {type(curvature).__name__}"
            )
        missing = [n for n in curvature.param_names() if n not in anchor]
        if missing:
            raise ValueError(f"anchor lacks {missing}")
        if self.damping_kind == "factored":
            curvature = factored_damping(curvature, self.damping)  # (P4)
        return replace(self, terms=(*self.terms, (anchor, curvature, float(lam))))

    def __call__(self, model: nn.Module) -> Tensor:
        """``R(θ)``, differentiable (autograd through eq. P2)."""
        params = dict(model.named_parameters())
        total = zero_like_model(model)
        for anchor, fisher, lam in self.terms:
            check_anchor(anchor, params, fisher.param_names())
            for factors in fisher.values():
                d = _folded_delta(factors, params, anchor)  # [o, i]
                term = factors.quadratic_form(d)  # vec(d)ᵀ (G ⊗ A) vec(d), eq. (P2)
                total = total + lam * (term + self._uniform * d.pow(2).sum())
            for name, f in fisher.diagonal.items():
                d = params[name] - anchor[name]
                total = total + lam * ((f + self._uniform) * d * d).sum()
        return 0.5 * total

    def add_grad_(self, model: nn.Module) -> Tensor:
        """Add ``λ (G Δ A + δ Δ)`` per layer to ``.grad``, eq. (P3); return ``R(θ)``."""
        return self.add_scaled_grad_(model, 1.0)

    def add_scaled_grad_(self, model: nn.Module, scale: float) -> Tensor:
        """Add ``scale · ∂R/∂θ`` to ``.grad`` (nothing at 0); return ``R(θ)`` unscaled.

        A ``BudgetPenalty`` calls it with its λ_t on a unit penalty (λ = 1): the value
        ``q_t`` and the step's gradient come from one product ``G Δ A`` per layer, added
        in place (embedding rows by index), never a dense copy.
        """
        params = dict(model.named_parameters())
        total = zero_like_model(model)
        delta = self._uniform
        with torch.no_grad():
            for anchor, fisher, lam in self.terms:
                for factors in fisher.values():
                    if factors.kind is LayerKind.EMBEDDING:
                        total += _embedding_rows_grad_(
                            factors, params, anchor, lam, scale, delta
                        )
                        continue
                    d = _folded_delta(factors, params, anchor)  # [o, i]
                    g = factors.apply(d)  # G d A, eq. (P3)
                    if delta:
                        g = g + delta * d
                    g = lam * g
                    total += 0.5 * (g * d).sum()
                    if scale == 0:
                        continue
                    weight = params[factors.weight]
                    for name, grad in factors.unfolded(g, weight.shape).items():
                        add_grad(params[name], grad, scale)
                for name, f in fisher.diagonal.items():
                    d = params[name] - anchor[name]
                    g = lam * (f + delta) * d
                    add_grad(params[name], g, scale)
                    total += 0.5 * (g * d).sum()
        return total


def _folded_delta(
    factors: KroneckerFactors, params: Mapping[str, Tensor], anchor: ParamDict
) -> Tensor:
    """``Δ = [W − W₀ | b − b₀]`` of one layer, eq. (K1): one fold of the difference."""
    return factors.folded({n: params[n] - anchor[n] for n in factors.param_names()})


def _embedding_rows_grad_(
    factors: KroneckerFactors,
    params: Mapping[str, Tensor],
    anchor: ParamDict,
    lam: float,
    scale: float = 1.0,
    delta: float = 0.0,
) -> Tensor:
    """Embedding term touching only rows with nonzero frequency that have moved (K6, P3).

    With ``weight: [V, d]`` and ``Δ = weight.T − anchor.T``, the gradient w.r.t. a row
    ``v`` is ``λ (A_v G + δ I) Δ_v``: zero where the row has not moved since the anchor
    (``Δ_v = 0``; under AdamW without weight decay, rows of tokens the new task has not
    used yet never move) and, without uniform damping ``δ``, where the old task never
    saw token v (``A_v = 0``). Those rows are skipped.
    """
    assert factors.support is not None
    weight, start = params[factors.weight], anchor[factors.weight]
    # which rows moved, read off without a float copy of the whole table (with factored
    # damping the support is every row of the vocabulary; δ I reaches every row)
    support = factors.support
    if len(support) == len(weight) or delta:  # every row: no gather
        rows = torch.nonzero(weight.detach().ne(start).any(dim=1)).flatten()
    else:
        rows = support[weight.detach()[support].ne(start[support]).any(dim=1)]
    # rows [m, o], as the table stores them: ((G Δ_m) diag(A_m))ᵀ = diag(A_m) Δ_mᵀ G
    # (G symmetric); transposed [o, m] operands made the element-wise products strided
    d = weight[rows] - start[rows]  # [m, o]
    assert isinstance(factors.A, Tensor)
    if delta:  # λ (A_m Δ_m G + δ Δ_m)
        g = right(d, factors.G).mul_(factors.A[rows, None])
        g = g.add_(d, alpha=delta).mul_(lam)
    else:
        g = right(d, factors.G).mul_(factors.A[rows, None] * lam)  # λ A_m Δ_m G  [m, o]
    if scale == 0:  # the value only
        return 0.5 * (g * d).sum()
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    if scale == 1:
        weight.grad.index_add_(0, rows, g.to(weight.grad.dtype))
    else:
        weight.grad.index_add_(0, rows, g.to(weight.grad.dtype), alpha=scale)
    return 0.5 * (g * d).sum()
