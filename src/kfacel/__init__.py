"""kfacel: keep a medical entity linker up to date with Kronecker-factored EWC (KFC).

The library in one loop (docs/design.md)::

    fisher = kfacel.estimate_kfac(model, batches, kind="empirical")
    penalty = kfacel.KFACPenalty().add_task(kfacel.snapshot(model), fisher, lam=1e2)
    loss = task_loss + penalty(model)  # ½ Σ_t λ_t (θ − θ*_t)ᵀ F_t (θ − θ*_t)
"""

from kfacel.consolidation import TaskState, load_state, save_state, snapshot
from kfacel.curvature import (
    DiagonalFisher,
    KFACFisher,
    KroneckerFactors,
    LowRankFactor,
    compress_factors,
    estimate_diagonal,
    estimate_kfac,
)
from kfacel.penalties import (
    DiagonalEWCPenalty,
    KFACPenalty,
    L2Penalty,
    NoPenalty,
    Penalty,
    build_penalty,
)
from kfacel.positions import valid_positions
from kfacel.types import Batch, FisherKind, NonFiniteCurvatureError, ParamDict

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "DiagonalEWCPenalty",
    "DiagonalFisher",
    "FisherKind",
    "KFACFisher",
    "KFACPenalty",
    "KroneckerFactors",
    "L2Penalty",
    "LowRankFactor",
    "NoPenalty",
    "NonFiniteCurvatureError",
    "ParamDict",
    "Penalty",
    "TaskState",
    "__version__",
    "build_penalty",
    "compress_factors",
    "estimate_diagonal",
    "estimate_kfac",
    "load_state",
    "save_state",
    "snapshot",
    "valid_positions",
]
