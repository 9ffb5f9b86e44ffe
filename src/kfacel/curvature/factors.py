"""Curvature values: Kronecker factors per layer, a K-FAC Fisher, a diagonal Fisher.

Immutable values returned by the estimators; the math that penalties need (quadratic
forms and their gradients, eqs. P2–P3) lives here so penalties stay short. The dense
matrices (``to_dense``) exist for tests and figures only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kfacel.curvature.layers import LayerKind, fold, unfold
from kfacel.types import FisherKind, KFACApprox, ParamDict


@dataclass(frozen=True)
class KroneckerFactors:
    """K-FAC block of one layer, ``F ≈ G ⊗ A`` (K5) for ``vec(W~)`` row-major (K2).

    Attributes:
        A: ``[i, i]`` input factor (bias coordinate last), or ``[V]`` for an Embedding,
            whose input factor is diagonal (K6).
        G: ``[o, o]`` output-gradient factor.
        kind: the layer type, which fixes how ``weight``/``bias`` fold into ``W~``.
        weight: parameter name of the weight.
        bias: parameter name of the bias, or None.
    """

    A: Tensor
    G: Tensor
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
            if self.A.ndim != 1:
                raise ValueError(f"{self.weight}: Embedding A must be a vector")
            if self.support is None:
                # rows with zero token frequency carry no curvature (K6)
                object.__setattr__(self, "support", torch.nonzero(self.A).flatten())
        elif self.A.ndim != 2 or self.A.shape[0] != self.A.shape[1]:
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
            assert self.support is not None
            out = torch.zeros_like(d)
            ds = d[:, self.support]  # [o, s]
            out[:, self.support] = (self.G @ ds) * self.A[self.support]  # G d diag(A)
            return out
        return self.G @ d @ self.A  # G d A, eq. (P3)

    def quadratic_form(self, d: Tensor) -> Tensor:
        """``vec(d)ᵀ (G ⊗ A) vec(d)`` for ``d: [o, i]``, eq. (P2)."""
        if d.shape != self.shape:
            raise ValueError(
                f"{self.weight}: d has shape {tuple(d.shape)}, want {self.shape}"
            )
        if self.kind is LayerKind.EMBEDDING:
            assert self.support is not None
            ds = d[:, self.support]  # [o, s]
            return torch.einsum("op,pi,i,oi->", self.G, ds, self.A[self.support], ds)
        return torch.einsum("op,pj,ji,oi->", self.G, d, self.A, d)  # Σ (G d A) ⊙ d

    def to_dense(self) -> Tensor:
        """``G ⊗ A`` as a dense ``[o·i, o·i]`` matrix (tests and figures only)."""
        A = torch.diag(self.A) if self.A.ndim == 1 else self.A
        return torch.kron(self.G, A)


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
