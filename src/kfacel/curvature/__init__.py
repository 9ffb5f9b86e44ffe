"""Fisher estimators and curvature values (pure math: no files, no printing)."""

from kfacel.curvature.diagonal import estimate_diagonal
from kfacel.curvature.factors import (
    DiagonalFisher,
    KFACFisher,
    KroneckerFactors,
    LowRankFactor,
    compress_factors,
)
from kfacel.curvature.kfac import estimate_kfac
from kfacel.curvature.layers import LayerKind
from kfacel.types import KFACApprox

__all__ = [
    "DiagonalFisher",
    "KFACApprox",
    "KFACFisher",
    "KroneckerFactors",
    "LayerKind",
    "LowRankFactor",
    "compress_factors",
    "estimate_diagonal",
    "estimate_kfac",
]
