"""Curvature values: Kronecker factors per layer, a K-FAC Fisher, a diagonal Fisher.

Immutable values returned by the estimators; the math that penalties need (quadratic
forms and their gradients, eqs. P2–P3) lives here so penalties stay short. The dense
matrices (``to_dense``) exist for tests and figures only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from kfacel.curvature.layers import LayerKind, fold, unfold
from kfacel.types import FisherKind, KFACApprox, ParamDict


@dataclass(frozen=True)
class LowRankFactor:
    """A PSD factor kept as ``U diag(s) Uᵀ + σ (I − U Uᵀ)``, eq. (K10).

    Attributes:
        U: ``[p, k]`` top eigenvectors (orthonormal columns).
        s: ``[k]`` their eigenvalues.
        sigma: ``[]`` the mean of the other ``p − k`` eigenvalues (0 when k = p).
    """

    U: Tensor
    s: Tensor
    sigma: Tensor
    _sigma: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p, k = self.U.shape
        if self.s.shape != (k,) or self.sigma.ndim != 0 or k > p:
            raise ValueError(
                f"low-rank factor: U {tuple(self.U.shape)}, s {tuple(self.s.shape)}, "
                f"sigma {tuple(self.sigma.shape)} do not fit"
            )
        object.__setattr__(self, "_sigma", float(self.sigma))  # addmm's beta

    @classmethod
    def of(cls, m: Tensor, rank: int) -> LowRankFactor:
        """The top-``rank`` eigenpairs of a symmetric ``m`` and the mean of the rest."""
        eig, vec = torch.linalg.eigh(m.double())  # ascending
        p = m.shape[0]
        k = min(rank, p)
        eig = eig.clamp_min(0)
        s, U = eig[p - k :].flip(0), vec[:, p - k :].flip(1)
        rest = eig[: p - k]
        sigma = rest.mean() if p > k else eig.new_zeros(())
        return cls(U.to(m.dtype), s.to(m.dtype), sigma.to(m.dtype))

    @property
    def shape(self) -> tuple[int, int]:
        """``(p, p)``, as the dense factor."""
        return (self.U.shape[0], self.U.shape[0])

    @property
    def rank(self) -> int:
        """k, the number of kept eigenpairs."""
        return int(self.U.shape[1])

    def left(self, d: Tensor) -> Tensor:
        """``M d`` for ``d: [p, n]``: ``σ d + U ((s − σ) ⊙ (Uᵀ d))`` (K10)."""
        t = (self.s - self.sigma)[:, None] * (self.U.T @ d)  # [k, n]
        return torch.addmm(d, self.U, t, beta=self._sigma)

    def right(self, d: Tensor) -> Tensor:
        """``d M`` for ``d: [n, p]``: ``σ d + ((d U) ⊙ (s − σ)) Uᵀ`` (M is symmetric)."""
        t = (d @ self.U) * (self.s - self.sigma)  # [n, k]
        return torch.addmm(d, t, self.U.T, beta=self._sigma)

    def dense(self) -> Tensor:
        """The ``[p, p]`` matrix (tests and figures only)."""
        eye = torch.eye(self.U.shape[0], dtype=self.U.dtype, device=self.U.device)
        return self.left(eye)

    def trace(self) -> float:
        """``Σ s + σ (p − k)``, without the dense matrix."""
        p, k = self.U.shape
        return float(self.s.sum()) + self._sigma * (p - k)

    def plus_identity(self, gamma: float) -> LowRankFactor:
        """``M + γ I``: every eigenvalue, kept or not, shifted by γ (K10, P4)."""
        return LowRankFactor(self.U, self.s + gamma, self.sigma + gamma)

    def to(self, device: torch.device | str) -> LowRankFactor:
        """The same factor with its tensors on ``device``."""
        return LowRankFactor(
            self.U.to(device), self.s.to(device), self.sigma.to(device)
        )


Factor = Tensor | LowRankFactor
"""A Kronecker factor: a dense ``[p, p]`` matrix (or an Embedding's ``[V]`` vector, K6),
or its low-rank form (K10)."""


def left(m: Factor, d: Tensor) -> Tensor:
    """``M d`` for a dense or low-rank factor."""
    return m.left(d) if isinstance(m, LowRankFactor) else m @ d


def right(d: Tensor, m: Factor) -> Tensor:
    """``d M`` for a dense or low-rank factor."""
    return m.right(d) if isinstance(m, LowRankFactor) else d @ m


def dense(m: Factor) -> Tensor:
    """A factor as a dense matrix (an Embedding's vector stays a vector)."""
    return m.dense() if isinstance(m, LowRankFactor) else m


def trace(m: Factor) -> float:
    """A factor's trace (an Embedding's vector A is its diagonal)."""
    if isinstance(m, LowRankFactor):
        return m.trace()
    return float(m.sum() if m.ndim == 1 else torch.trace(m))


def plus_identity(m: Factor, gamma: float) -> Factor:
    """``M + γ I`` for a dense, diagonal (Embedding, K6) or low-rank factor."""
    if isinstance(m, LowRankFactor):
        return m.plus_identity(gamma)
    if m.ndim == 1:
        return m + gamma
    return m + gamma * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)


@dataclass(frozen=True)
class KroneckerFactors:
    """K-FAC block of one layer, ``F ≈ G ⊗ A`` (K5) for ``vec(W~)`` row-major (K2).

    Attributes:
        A: ``[i, i]`` input factor (bias coordinate last), or ``[V]`` for an Embedding,
            whose input factor is diagonal (K6); or its low-rank form (K10).
        G: ``[o, o]`` output-gradient factor, or its low-rank form (K10).
        kind: the layer type, which fixes how ``weight``/``bias`` fold into ``W~``.
        weight: parameter name of the weight.
        bias: parameter name of the bias, or None.
    """

    A: Factor
    G: Factor
    kind: LayerKind
    weight: str
    bias: str | None = None
    support: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        o = self.G.shape[0]
        if self.G.shape != (o, o):
            raise ValueError(
                f"{self.weight}: G must be square, got {tuple(self.G.shape)}"
            )
        if self.kind is LayerKind.EMBEDDING:
            if not isinstance(self.A, Tensor) or self.A.ndim != 1:
                raise ValueError(f"{self.weight}: Embedding A must be a vector")
            if self.support is None:
                # rows with zero token frequency carry no curvature (K6)
                object.__setattr__(self, "support", torch.nonzero(self.A).flatten())
        elif len(self.A.shape) != 2 or self.A.shape[0] != self.A.shape[1]:
            raise ValueError(
                f"{self.weight}: A must be square, got {tuple(self.A.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``[o, i]`` of the folded weight ``W~``."""
        return (self.G.shape[0], self.A.shape[0])

    def param_names(self) -> tuple[str, ...]:
        """Names of the parameters this block covers."""
        return (self.weight,) if self.bias is None else (self.weight, self.bias)

    def folded(self, params: Mapping[str, Tensor]) -> Tensor:
        """``W~ = [W | b]`` of this layer from a name-to-tensor mapping, eq. (K1)."""
        bias = params[self.bias] if self.bias is not None else None
        return fold(self.kind, params[self.weight], bias)

    def unfolded(self, d: Tensor, weight_shape: torch.Size) -> ParamDict:
        """Split a ``[o, i]`` tensor into ``{weight name: …, bias name: …}``."""
        w, b = unfold(self.kind, d, weight_shape, self.bias is not None)
        out = {self.weight: w}
        if self.bias is not None and b is not None:
            out[self.bias] = b
        return out

    def apply(self, d: Tensor) -> Tensor:
        """``G d A`` for ``d: [o, i]``: the product ``(G ⊗ A) vec(d)`` as a matrix (P3).

        For an Embedding only the supported columns are nonzero.
        """
        if self.kind is LayerKind.EMBEDDING:
            assert self.support is not None and isinstance(self.A, Tensor)
            out = torch.zeros_like(d)
            ds = d[:, self.support]  # [o, s]
            out[:, self.support] = (
                left(self.G, ds) * self.A[self.support]
            )  # G d diag(A)
            return out
        return right(left(self.G, d), self.A)  # G d A, eq. (P3); (K10) when low-rank

    def quadratic_form(self, d: Tensor) -> Tensor:
        """``vec(d)ᵀ (G ⊗ A) vec(d)`` for ``d: [o, i]``, eq. (P2)."""
        if d.shape != self.shape:
            raise ValueError(
                f"{self.weight}: d has shape {tuple(d.shape)}, want {self.shape}"
            )
        if isinstance(self.A, LowRankFactor) or isinstance(self.G, LowRankFactor):
            return (self.apply(d) * d).sum()  # Σ (G d A) ⊙ d with (K10)
        if self.kind is LayerKind.EMBEDDING:
            assert self.support is not None
            ds = d[:, self.support]  # [o, s]
            return torch.einsum("op,pi,i,oi->", self.G, ds, self.A[self.support], ds)
        return torch.einsum("op,pj,ji,oi->", self.G, d, self.A, d)  # Σ (G d A) ⊙ d

    def to_dense(self) -> Tensor:
        """``G ⊗ A`` as a dense ``[o·i, o·i]`` matrix (tests and figures only)."""
        A = dense(self.A)
        A = torch.diag(A) if A.ndim == 1 else A
        return torch.kron(dense(self.G), A)

    def compressed(self, rank: int) -> KroneckerFactors:
        """This block with each matrix factor larger than ``rank`` kept at that rank (K10).

        An Embedding's diagonal A stays as it is; a factor already low-rank is kept.
        """

        def keep(m: Factor) -> Factor:
            if isinstance(m, LowRankFactor) or m.ndim != 2 or m.shape[0] <= rank:
                return m
            return LowRankFactor.of(m, rank)

        return replace(self, A=keep(self.A), G=keep(self.G))

    def damped(self, delta: float) -> KroneckerFactors:
        """``(G + γ_G I) ⊗ (A + γ_A I)``: factored Tikhonov damping, eq. (P4).

        ``γ_A = π√δ`` and ``γ_G = √δ/π`` with ``π² = (tr A / dim A) / (tr G / dim G)``
        (Martens & Grosse 2015, §6.3), so ``γ_A γ_G = δ`` and each factor is damped in
        proportion to its own mean eigenvalue. Unlike ``δ I`` on the product, the cross
        terms ``γ_G (I ⊗ A) + γ_A (G ⊗ I)`` keep curvature along the inputs the old task
        used (A) and the outputs it was sensitive to (G), even where the product ``G ⊗ A``
        is flat. An Embedding's rows the old task never saw get ``γ_A`` too.

        A low-rank factor (K10) is damped in its eigenvalues, kept and not: ``s + γ``,
        ``σ + γ``; its trace ``Σ s + σ (p − k)`` is the whole factor's, so π is too.

        Raises:
            ValueError: ``delta`` < 0.
        """
        if delta < 0:
            raise ValueError(f"damping must be >= 0, got {delta}")
        if delta == 0:
            return self
        mean_a = trace(self.A) / self.A.shape[0]
        mean_g = trace(self.G) / self.G.shape[0]
        pi = (mean_a / mean_g) ** 0.5 if mean_a > 0 and mean_g > 0 else 1.0
        gamma_a, gamma_g = pi * delta**0.5, delta**0.5 / pi
        return replace(
            self,
            A=plus_identity(self.A, gamma_a),
            G=plus_identity(self.G, gamma_g),
            support=None,
        )


@dataclass(frozen=True)
class KFACFisher(Mapping[str, KroneckerFactors]):
    """A K-FAC Fisher: module name to :class:`KroneckerFactors`.

    Attributes:
        factors: module name to its factors.
        kind: which Fisher (K4).
        num_examples: how many examples the statistics average over.
        uncovered: names of trainable parameters no factor covers.
        diagonal: diagonal Fisher of the uncovered parameters (``uncovered="diagonal"``),
            empty when they are ignored (the paper's choice).
        approx: how uses of a layer within one example entered the factors: expand
            (K5) or reduce (K8; Embedding factors are K5–K6 either way).
    """

    factors: dict[str, KroneckerFactors]
    kind: FisherKind
    num_examples: int
    uncovered: tuple[str, ...] = ()
    diagonal: ParamDict = field(default_factory=dict)
    approx: KFACApprox = KFACApprox.EXPAND

    def __getitem__(self, name: str) -> KroneckerFactors:
        return self.factors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.factors)

    def __len__(self) -> int:
        return len(self.factors)

    def param_names(self) -> tuple[str, ...]:
        """Every parameter this Fisher has curvature for."""
        names = [n for f in self.factors.values() for n in f.param_names()]
        return (*names, *self.diagonal)


def compress_factors(
    fisher: KFACFisher, rank: int, layers: Callable[[str], bool] | None = None
) -> KFACFisher:
    """``fisher`` with every Kronecker factor larger than ``rank`` kept at that rank (K10).

    ``layers`` picks the layers (by module name) to compress; all when None.

    Raises:
        ValueError: ``rank`` < 1.
    """
    if rank < 1:
        raise ValueError(f"factor rank must be >= 1, got {rank}")
    factors = {
        name: f.compressed(rank) if layers is None or layers(name) else f
        for name, f in fisher.items()
    }
    return replace(fisher, factors=factors)


def factored_damping(fisher: KFACFisher, delta: float) -> KFACFisher:
    """``fisher`` with every block damped by (P4) and ``δ`` added to its diagonal part.

    Raises:
        ValueError: ``delta`` < 0.
    """
    if delta < 0:
        raise ValueError(f"damping must be >= 0, got {delta}")
    factors = {name: f.damped(delta) for name, f in fisher.items()}
    diagonal = {name: f + delta for name, f in fisher.diagonal.items()}
    return replace(fisher, factors=factors, diagonal=diagonal)


@dataclass(frozen=True)
class DiagonalFisher(Mapping[str, Tensor]):
    """A diagonal Fisher, eq. (K7): parameter name to ``F_jj`` shaped like the parameter."""

    diagonal: ParamDict
    kind: FisherKind
    num_examples: int

    def __getitem__(self, name: str) -> Tensor:
        return self.diagonal[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.diagonal)

    def __len__(self) -> int:
        return len(self.diagonal)

    def param_names(self) -> tuple[str, ...]:
        """Every parameter this Fisher has curvature for."""
        return tuple(self.diagonal)
