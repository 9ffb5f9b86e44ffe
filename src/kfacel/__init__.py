"""kfacel: keep a medical entity linker up to date with Kronecker-factored EWC (KFC).

The library in one loop (docs/design.md)::

    fisher = kfacel.estimate_kfac(model, batches, kind="empirical")
    penalty = kfacel.KFACPenalty().add_task(kfacel.snapshot(model), fisher, lam=1e2)
    loss = task_loss + penalty(model)  # ½ Σ_t λ_t (θ − θ*_t)ᵀ F_t (θ − θ*_t)

and a trained model in use (docs/linking.md)::

    linker = kfacel.Linker.load("models/v2")
    linker.link("Aspirin eased her migraine.", ["migraine"])[0].best

The names below are imported on first use (PEP 562), so that ``import kfacel`` and
``kfacel --help`` do not load torch; ``from kfacel import KFACPenalty`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from kfacel.linking.api import LinkedConcept, Linker, LinkResult
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

_SOURCES = {
    "kfacel.consolidation": ("TaskState", "load_state", "save_state", "snapshot"),
    "kfacel.curvature": (
        "DiagonalFisher",
        "KFACFisher",
        "KroneckerFactors",
        "LowRankFactor",
        "compress_factors",
        "estimate_diagonal",
        "estimate_kfac",
    ),
    "kfacel.linking.api": ("LinkedConcept", "LinkResult", "Linker"),
    "kfacel.penalties": (
        "DiagonalEWCPenalty",
        "KFACPenalty",
        "L2Penalty",
        "NoPenalty",
        "Penalty",
        "build_penalty",
    ),
    "kfacel.positions": ("valid_positions",),
    "kfacel.types": ("Batch", "FisherKind", "NonFiniteCurvatureError", "ParamDict"),
}
"""The module each public name comes from (the ``TYPE_CHECKING`` imports, for mypy)."""

_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "Batch",
    "DiagonalEWCPenalty",
    "DiagonalFisher",
    "FisherKind",
    "KFACFisher",
    "KFACPenalty",
    "KroneckerFactors",
    "L2Penalty",
    "LinkResult",
    "LinkedConcept",
    "Linker",
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


def __getattr__(name: str) -> Any:
    """A public name, or a subpackage (``kfacel.curvature``), imported on first use."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the subpackage exists but one of its imports is missing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
