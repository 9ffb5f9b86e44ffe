"""Forgetting a finished task from its consolidation state: selective synaptic dampening.

A task A is to be forgotten (consent withdrawn) without its data and without
retraining. The model directory keeps, for every finished task t, its anchor ``θ*_t``
and its Fisher ``F_t`` (per example, K3); A's Fisher says which weights A relies on,
the retained tasks' Fishers which weights they rely on. Selective synaptic dampening
(SSD; Foster, Schoepf & Brintrup 2023, "Fast Machine Unlearning Without Retraining
Through Selective Synaptic Dampening", arXiv:2308.07707, eqs. 3–4) shrinks, towards
zero, the coordinates far more important to the forget data than to the rest:

    (F1)  θ_k ← β_k θ_k   where  []_f,k > α []_r,k,   β_k = min(λ []_r,k / []_f,k, 1),

other coordinates unchanged. The importances are Fisher diagonals in some basis: the
forget one is A's, ``[]_f = F_A``; the retained one is the per-example Fisher of the
retained data, the tasks' Fishers weighted by their example counts,

    (F2)  []_r = Σ_{t≠A} N_t F_t / Σ_{t≠A} N_t.

Each ``F_t`` was estimated at its own anchor, not at the current weights: the states
are all there is once the data are gone. A coordinate the retained tasks never use
(``[]_r = 0``, e.g. the embedding row of a word only A had) gets ``β = 0``.

**Diagonal SSD** (``ssd``) takes coordinates = parameters, the paper's choice. For a
diagonal (``ewc``) state the importance is its diagonal; for a K-FAC state it is the
diagonal of each layer's Kronecker product,

    (F3)  diag(G ⊗ A) = diag(G) ⊗ diag(A),  i.e.  []_oi = G_oo A_ii  on W~ [o, i] (K1, K2),

and the diagonal of the parameters no factor covers, where the state keeps it.

**Kronecker SSD** (``kfac-ssd``) takes coordinates in A's K-FAC eigenbasis. With
``A_f = Q_A diag(a) Q_Aᵀ`` and ``G_f = Q_G diag(g) Q_Gᵀ``, ``Q = Q_G ⊗ Q_A`` is
orthogonal and diagonalizes the forget block exactly:

    (F4)  Qᵀ (G_f ⊗ A_f) Q = diag(g ⊗ a),   coordinates  W' = Q_Gᵀ W~ Q_A  (vec(W') = Qᵀ vec(W~)).

So in this basis the forget importance is A's K-FAC Fisher itself, ``[]_f,oi = g_o a_i``,
where diagonal SSD drops its off-diagonal part. The retained importance is the retained
Fisher's diagonal in the same basis (the EKFAC view, George et al. 2018, NeurIPS): for a
K-FAC term ``Qᵀ (G_t ⊗ A_t) Q = (Q_Gᵀ G_t Q_G) ⊗ (Q_Aᵀ A_t Q_A)``, whose diagonal is

    (F5)  []_r,oi += w_t (q_Gᵀ G_t q_G)_o (q_Aᵀ A_t q_A)_i   (Rayleigh quotients),

and for a diagonal term ``d`` (on W~) ``[]_r,oi += w_t Σ_pj Q_G,po² d_pj Q_A,ji²``. (F1)
scales W' and ``W~ ← Q_G W' Q_Aᵀ`` maps it back. An Embedding's input factor is
diagonal (K6): its basis is the identity, ``a = A``. Parameters outside A's factors
(its diagonal part) are dampened as in diagonal SSD.

The dampening is one linear map per layer (:class:`Dampening`); :func:`forget_task`
applies it to the weights and to the anchors of the retained tasks finished after A
(which were trained from A's weights: a later penalty pulling back to an untouched
anchor would bring A back), and drops A's state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import torch
from torch import Tensor

from kfacel.consolidation.state import TaskState
from kfacel.curvature.factors import (
    DiagonalFisher,
    Factor,
    KFACFisher,
    KroneckerFactors,
    LowRankFactor,
    dense,
)
from kfacel.types import ParamDict


class ForgetMethod(StrEnum):
    """The coordinates SSD dampens in."""

    SSD = "ssd"
    """Parameters, importances the Fisher diagonal (F3): the paper's SSD."""
    KFAC_SSD = "kfac-ssd"
    """The forget task's K-FAC eigenbasis per layer (F4–F5)."""


FORGET_METHODS = tuple(m.value for m in ForgetMethod)
DEFAULT_ALPHA = 1.0
"""SSD's selection threshold α (F1): chosen on PUBLIC-3-small's dev splits for
``kfac-ssd`` (docs/forget.md); the paper's is 10."""
DEFAULT_LAM = 1.0
"""SSD's dampening constant λ (F1), the paper's value."""
ROUND_OFF = 64
"""Machine epsilons (of the largest importance) below which an importance is noise."""


@dataclass(frozen=True)
class LayerDampening:
    """(F1) in one layer's basis: ``W~ ← Q_G (β ⊙ (Q_Gᵀ W~ Q_A)) Q_Aᵀ`` (F4).

    Attributes:
        layer: the layer's factors (names, kind: how its parameters fold, K1).
        scale: ``[o, i]`` β per coordinate.
        QG: ``[o, o]`` output basis, or None for the identity.
        QA: ``[i, i]`` input basis, or None for the identity.
    """

    layer: KroneckerFactors
    scale: Tensor
    QG: Tensor | None = None
    QA: Tensor | None = None

    def apply(self, params: Mapping[str, Tensor]) -> ParamDict:
        """The layer's dampened parameters, by name.

        Computed in float64 as ``W~ + Q_G ((β − 1) ⊙ W') Q_Aᵀ``: coordinates with
        ``β = 1`` are left exactly as they are.
        """
        w = self.layer.folded(params)  # [o, i]
        x = w.double()
        if self.QG is not None:
            x = self.QG.double().T @ x  # Q_Gᵀ W~
        if self.QA is not None:
            x = x @ self.QA.double()  # W' = Q_Gᵀ W~ Q_A, eq. (F4)
        x = (self.scale.double() - 1) * x  # the change (F1) makes, in the basis
        if self.QA is not None:
            x = x @ self.QA.double().T
        if self.QG is not None:
            x = self.QG.double() @ x  # back: Q_G (·) Q_Aᵀ
        return self.layer.unfolded(w + x.to(w.dtype), params[self.layer.weight].shape)


@dataclass(frozen=True)
class Dampening:
    """The map (F1): per-layer dampenings and per-parameter β for the rest."""

    layers: tuple[LayerDampening, ...]
    params: ParamDict

    def apply(self, params: Mapping[str, Tensor]) -> ParamDict:
        """``params`` dampened (a new dict; names the map does not cover are kept)."""
        out = dict(params)
        for d in self.layers:
            if d.layer.weight in out:
                out |= d.apply(out)
        for name, beta in self.params.items():
            if name in out:
                out[name] = beta.to(out[name].dtype) * out[name]
        return out

    def dampened(self) -> tuple[int, int]:
        """(coordinates with β < 1, coordinates covered)."""
        scales = [d.scale for d in self.layers] + list(self.params.values())
        return (
            sum(int((s < 1).sum()) for s in scales),
            sum(s.numel() for s in scales),
        )


def ssd_scale(forget: Tensor, retained: Tensor, *, alpha: float, lam: float) -> Tensor:
    """β of eq. (F1) per coordinate, from the two importances (same shape).

    A forget importance below ``ROUND_OFF`` machine epsilons of the largest one is
    round-off, not evidence (the softmax's constant direction has none in any task),
    and is not selected.

    >>> ssd_scale(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]),
    ...           alpha=2.0, lam=1.0).tolist()
    [0.25, 1.0, 1.0]
    """
    if forget.shape != retained.shape:
        raise ValueError(
            f"importances differ in shape: {tuple(forget.shape)} and "
            f"{tuple(retained.shape)}"
        )
    if alpha <= 0 or lam < 0:
        raise ValueError(f"SSD needs alpha > 0 and lam >= 0, got {alpha} and {lam}")
    forget, retained = forget.clamp_min(0), retained.clamp_min(0)  # PSD; round-off
    # an importance at round-off level (the softmax's constant direction) is no evidence
    floor = ROUND_OFF * torch.finfo(forget.dtype).eps * forget.max().clamp_min(0)
    selected = (forget > alpha * retained) & (forget > floor)
    beta = lam * retained / forget.clamp_min(torch.finfo(forget.dtype).tiny)
    beta = beta.clamp(max=1.0)
    return torch.where(selected, beta, torch.ones_like(beta))


def factor_diagonal(m: Factor) -> Tensor:
    """The diagonal of a Kronecker factor (dense, an Embedding's vector, or K10)."""
    if isinstance(m, LowRankFactor):
        return m.sigma + (m.U**2 * (m.s - m.sigma)).sum(1)  # diag(σI + U(s−σ)Uᵀ)
    return m if m.ndim == 1 else torch.diagonal(m)


def diagonal_importance(state: TaskState) -> ParamDict:
    """A state's Fisher diagonal per parameter, eq. (F3) for K-FAC layers.

    Raises:
        ValueError: the state keeps no curvature (``l2``).
    """
    c = state.curvature
    if isinstance(c, DiagonalFisher):
        return dict(c.diagonal)
    if not isinstance(c, KFACFisher):
        raise ValueError(
            f"task {state.task!r} keeps no Fisher ({state.method} state): SSD needs "
            "each task's importances"
        )
    out = dict(c.diagonal)
    for f in c.values():
        d = torch.outer(factor_diagonal(f.G), factor_diagonal(f.A))  # eq. (F3)
        out |= f.unfolded(d, state.anchor[f.weight].shape)
    return out


def retained_weights(retained: Sequence[TaskState]) -> list[float]:
    """``w_t = N_t / Σ N_t`` of eq. (F2) (equal weights where a count is missing)."""
    counts = [
        float(s.curvature.num_examples)
        if isinstance(s.curvature, KFACFisher | DiagonalFisher)
        else 0.0
        for s in retained
    ]
    total = sum(counts)
    if total <= 0:
        return [1.0 / len(retained)] * len(retained)
    return [n / total for n in counts]


def ssd_dampening(
    forget: TaskState,
    retained: Sequence[TaskState],
    *,
    alpha: float = DEFAULT_ALPHA,
    lam: float = DEFAULT_LAM,
) -> Dampening:
    """Diagonal SSD (F1–F3): β per parameter the forget state covers."""
    f_imp = diagonal_importance(forget)
    r_imp = _retained_sum(retained, f_imp)
    scales = {n: ssd_scale(f, r_imp[n], alpha=alpha, lam=lam) for n, f in f_imp.items()}
    return Dampening((), scales)


def kfac_ssd_dampening(
    forget: TaskState,
    retained: Sequence[TaskState],
    *,
    alpha: float = DEFAULT_ALPHA,
    lam: float = DEFAULT_LAM,
) -> Dampening:
    """Kronecker SSD (F4–F5) in each layer's forget eigenbasis; the rest as diagonal SSD.

    Raises:
        ValueError: the forget state is not K-FAC, or a retained state keeps no Fisher.
    """
    c = forget.curvature
    if not isinstance(c, KFACFisher):
        raise ValueError(
            f"kfac-ssd needs task {forget.task!r}'s K-FAC factors; it is a "
            f"{forget.method} state (use ssd)"
        )
    weights = retained_weights(retained)
    diags = [diagonal_importance(s) for s in retained]
    layers = []
    for name, f in c.items():
        g, QG = _eigen(f.G)
        a, QA = _eigen(f.A)
        f_imp = torch.outer(g, a)  # eigenvalues of G_f ⊗ A_f, eq. (F4)
        r_imp = torch.zeros_like(f_imp)
        for w, s, d in zip(weights, retained, diags, strict=True):
            r_imp += w * _rotated_diagonal(s, d, name, f, QG, QA)  # eq. (F5)
        beta = ssd_scale(f_imp, r_imp, alpha=alpha, lam=lam)
        layers.append(LayerDampening(f, beta, QG, QA))
    rest = ssd_dampening(
        replace(forget, curvature=DiagonalFisher(c.diagonal, c.kind, c.num_examples)),
        retained,
        alpha=alpha,
        lam=lam,
    )
    return Dampening(tuple(layers), rest.params)


def forget_task(
    params: Mapping[str, Tensor],
    states: Sequence[TaskState],
    task: str,
    *,
    method: ForgetMethod | str = ForgetMethod.KFAC_SSD,
    alpha: float = DEFAULT_ALPHA,
    lam: float = DEFAULT_LAM,
) -> tuple[ParamDict, tuple[TaskState, ...], Dampening]:
    """Forget ``task``: dampened weights, the states without it, and the map used.

    The anchors of the retained tasks finished after ``task`` are dampened by the same
    map; earlier anchors never held it and are kept.

    Raises:
        ValueError: one line, naming the known tasks, when no state is ``task``'s; or
            when no other task is left to hold (SSD would erase every weight A used).
    """
    names = [s.task for s in states]
    if task not in names:
        known = ", ".join(repr(n) for n in names) or "none"
        raise ValueError(f"no consolidation state for task {task!r}; known: {known}")
    at = names.index(task)
    retained = [s for s in states if s.task != task]
    if not retained:
        raise ValueError(
            f"task {task!r} is the only consolidated task: nothing is left to retain "
            "(train a new model instead)"
        )
    build = (
        ssd_dampening
        if ForgetMethod(method) is ForgetMethod.SSD
        else kfac_ssd_dampening
    )
    dampening = build(states[at], retained, alpha=alpha, lam=lam)
    kept = tuple(
        replace(s, anchor=dampening.apply(s.anchor)) if i > at else s
        for i, s in enumerate(states)
        if i != at
    )
    return dampening.apply(params), kept, dampening


def _eigen(m: Factor) -> tuple[Tensor, Tensor | None]:
    """Eigenvalues (≥ 0) and eigenvectors of a factor; a vector's basis is the identity."""
    m = dense(m)
    if m.ndim == 1:
        return m, None
    eig, vec = torch.linalg.eigh(m.double())
    return eig.clamp_min(0).to(m.dtype), vec.to(m.dtype)


def _rotated_diagonal(
    state: TaskState,
    diag: ParamDict,
    name: str,
    layer: KroneckerFactors,
    QG: Tensor | None,
    QA: Tensor | None,
) -> Tensor:
    """``diag(Qᵀ F_t Q)`` of one layer on ``[o, i]``, eq. (F5); zero where F_t has none.

    ``diag``: the state's Fisher diagonal per parameter (:func:`diagonal_importance`),
    used where it keeps no factors of this layer.
    """
    c = state.curvature
    if isinstance(c, KFACFisher) and name in c.factors:
        t = c[name]
        return torch.outer(_rayleigh(t.G, QG), _rayleigh(t.A, QA))
    if layer.weight not in diag:
        return torch.zeros(layer.shape, dtype=dense(layer.G).dtype)
    params = {
        n: diag.get(n, torch.zeros_like(state.anchor[n])) for n in layer.param_names()
    }
    d = layer.folded(params)  # [o, i]
    if QG is not None:
        d = (QG**2).T @ d  # Σ_p Q_G,po² d_pj
    if QA is not None:
        d = d @ QA**2  # Σ_j d_oj Q_A,ji²
    return d


def _rayleigh(m: Factor, Q: Tensor | None) -> Tensor:
    """``diag(Qᵀ M Q)``: M's Rayleigh quotient along each basis vector (F5)."""
    if Q is None:
        return factor_diagonal(m)
    MQ = m.left(Q) if isinstance(m, LowRankFactor) else m.to(Q.dtype) @ Q  # [p, p]
    return (MQ * Q).sum(0)


def _retained_sum(retained: Sequence[TaskState], like: ParamDict) -> ParamDict:
    """``[]_r`` of eq. (F2) for each parameter of ``like`` (zero where none has it)."""
    out = {n: torch.zeros_like(t) for n, t in like.items()}
    for w, s in zip(retained_weights(retained), retained, strict=True):
        for n, t in diagonal_importance(s).items():
            if n in out:
                out[n] += w * t.to(out[n].dtype)
    return out
