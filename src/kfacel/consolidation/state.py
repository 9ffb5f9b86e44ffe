"""What a finished task leaves behind: the ``TaskState`` value and its flat tensor form.

A state is the task's anchor ``θ*`` (the trainable parameters when it was finished,
:func:`snapshot`) and the curvature its method keeps: a K-FAC Fisher (``kfac``), a
diagonal Fisher (``ewc``) or none (``l2``). :func:`stored_tensors` is the flat form the
store writes (``kfacel.consolidation.store``): Kronecker factors are symmetric and kept
as their upper triangle, or, kept low-rank (K10, ``compress_factors``), as
``<key>.U``, ``.s`` and ``.sigma``; equal factors (layers that read the same input) are
kept once, the others naming it (``shared_factors``). :func:`from_stored` is its
inverse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.curvature.factors import (
    DiagonalFisher,
    Factor,
    KFACFisher,
    KroneckerFactors,
    LowRankFactor,
)
from kfacel.curvature.layers import LayerKind
from kfacel.types import ConsolidationMethod, FisherKind, KFACApprox, ParamDict

METHODS = tuple(m.value for m in ConsolidationMethod)
"""Consolidation methods: ``kfac`` (K-FAC Fisher), ``ewc`` (diagonal) and ``l2`` (none)."""
Curvature = KFACFisher | DiagonalFisher | None
SHARED_FACTORS = "shared_factors"
"""Metadata key: factor key to the key of an equal factor stored in its place."""
FACTOR_RANK = "factor_rank"
"""Key of a state's ``meta``: the rank its large Kronecker factors are kept at (K10)."""
TASK_EXAMPLES = "task_examples"
"""Key of a state's ``meta``: the old task's training-query count (``--lam bayes``)."""


@dataclass(frozen=True)
class TaskState:
    """What a finished task leaves behind: its anchor ``θ*`` and curvature ``F``."""

    task: str
    method: str
    anchor: ParamDict
    curvature: Curvature
    meta: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of the tensors this state stores."""
        tensors = stored_tensors(self)[0]
        return sum(t.numel() * t.element_size() for t in tensors.values())


def snapshot(model: nn.Module) -> ParamDict:
    """Detached copies of the trainable parameters: the anchor ``θ*`` of a task."""
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
    }


def curvature_to(curvature: Curvature, device: torch.device | str) -> Curvature:
    """A K-FAC or diagonal Fisher with every tensor on ``device`` (None stays None)."""
    if isinstance(curvature, DiagonalFisher):
        diagonal = {k: v.to(device) for k, v in curvature.items()}
        return replace(curvature, diagonal=diagonal)
    if isinstance(curvature, KFACFisher):
        moved: dict[int, Any] = {}  # a factor shared by layers stays shared

        def to(m: Any) -> Any:
            if id(m) not in moved:
                moved[id(m)] = m.to(device)
            return moved[id(m)]

        factors = {
            k: replace(f, A=to(f.A), G=to(f.G), support=None)
            for k, f in curvature.items()
        }
        diagonal = {k: v.to(device) for k, v in curvature.diagonal.items()}
        return replace(curvature, factors=factors, diagonal=diagonal)
    return curvature


def states_nbytes(states: Mapping[str, TaskState] | Sequence[TaskState]) -> int:
    """Total bytes of several states."""
    items = states.values() if isinstance(states, Mapping) else states
    return sum(s.nbytes() for s in items)


def describe(state: TaskState) -> dict[str, Any]:
    """The metadata that tells how to read a state's tensors back (:func:`from_stored`)."""
    c = state.curvature
    meta: dict[str, Any] = {"task": state.task, "method": state.method}
    if isinstance(c, KFACFisher | DiagonalFisher):
        meta |= {"fisher_kind": str(c.kind), "num_examples": c.num_examples}
    if isinstance(c, KFACFisher):
        meta["layers"] = {
            n: {"kind": str(f.kind), "weight": f.weight, "bias": f.bias}
            for n, f in c.items()
        }
        meta["approx"] = str(c.approx)  # expand (K5) or reduce (K8)
        meta["uncovered"] = list(c.uncovered)
        meta["diagonal"] = sorted(c.diagonal)
    return meta


def stored_tensors(state: TaskState) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors a state stores, and which factor keys stand for an equal factor.

    Layers that read the same input (the queries, keys and values of attention; LoRA
    adapters on them) have equal input factors: each is stored once, and the others
    name it (``shared_factors`` in the metadata).
    """
    out = {f"anchor/{k}": v.contiguous() for k, v in state.anchor.items()}
    shared: dict[str, str] = {}
    c = state.curvature
    if isinstance(c, KFACFisher):
        stored: list[tuple[str, Factor]] = []
        for name, f in c.items():
            for which, m in (("G", f.G), ("A", f.A)):
                key = f"kfac/{name}/{which}"
                twin = next((k for k, o in stored if _equal_factors(m, o)), None)
                if twin is not None:
                    shared[key] = twin
                    continue
                stored.append((key, m))
                out |= _factor_tensors(key, m)
        out |= {f"diag/{k}": v.contiguous() for k, v in c.diagonal.items()}
    elif isinstance(c, DiagonalFisher):
        out |= {f"diag/{k}": v.contiguous() for k, v in c.items()}
    return out, shared


def from_stored(
    meta: dict[str, Any], tensors: dict[str, Tensor], path: Path
) -> TaskState:
    """The state that ``meta`` and ``tensors`` describe; inverse of :func:`stored_tensors`.

    Raises:
        ValueError: the metadata or the tensors are malformed (named by ``path``).
    """
    try:
        anchor = {k[7:]: v for k, v in tensors.items() if k.startswith("anchor/")}
        diag = {k[5:]: v for k, v in tensors.items() if k.startswith("diag/")}
        curvature: Curvature = None
        if meta["method"] == "kfac":
            curvature = _kfac_from_stored(meta, tensors, diag)
        elif meta["method"] == "ewc":
            curvature = DiagonalFisher(
                diag, FisherKind(meta["fisher_kind"]), int(meta["num_examples"])
            )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed consolidation state ({exc})") from exc
    return TaskState(meta["task"], meta["method"], anchor, curvature, meta)


def _kfac_from_stored(
    meta: dict[str, Any], tensors: dict[str, Tensor], diag: dict[str, Tensor]
) -> KFACFisher:
    """The K-FAC Fisher of a stored ``kfac`` state; a shared factor is read once."""
    factors = {}
    shared = meta.get(SHARED_FACTORS, {})
    read: dict[str, Factor] = {}

    def factor(key: str, vector: bool) -> Factor:
        key = shared.get(key, key)
        if key not in read:
            read[key] = _read_factor(tensors, key, vector=vector)
        return read[key]

    for name, layer in meta["layers"].items():
        kind = LayerKind(layer["kind"])
        factors[name] = KroneckerFactors(
            factor(f"kfac/{name}/A", kind is LayerKind.EMBEDDING),
            factor(f"kfac/{name}/G", False),
            kind,
            layer["weight"],
            layer["bias"],
        )
    return KFACFisher(
        factors,
        FisherKind(meta["fisher_kind"]),
        int(meta["num_examples"]),
        tuple(meta.get("uncovered", ())),
        diag,
        KFACApprox(meta.get("approx", KFACApprox.EXPAND)),
    )


def _equal_factors(a: Factor, b: Factor) -> bool:
    """Whether two factors hold the same numbers (same form, shapes and values)."""
    if isinstance(a, LowRankFactor) and isinstance(b, LowRankFactor):
        return all(
            x.shape == y.shape and torch.equal(x, y)
            for x, y in ((a.U, b.U), (a.s, b.s), (a.sigma, b.sigma))
        )
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    return False


def _factor_tensors(key: str, m: Factor) -> dict[str, Tensor]:
    """A factor's tensors on disk.

    A vector as is, a matrix's upper triangle, or the low-rank form's ``U``, ``s`` and
    ``sigma`` (K10).
    """
    if isinstance(m, LowRankFactor):
        return {
            f"{key}.U": m.U.contiguous(),
            f"{key}.s": m.s.contiguous(),
            f"{key}.sigma": m.sigma.reshape(1).contiguous(),
        }
    return {key: m.contiguous() if m.ndim == 1 else _pack(m)}


def _read_factor(tensors: Mapping[str, Tensor], key: str, *, vector: bool) -> Factor:
    """Inverse of :func:`_factor_tensors`."""
    if key in tensors:
        return tensors[key] if vector else _unpack(tensors[key])
    sigma = tensors[f"{key}.sigma"]
    if sigma.shape != (1,):
        raise ValueError(f"{key}.sigma must hold one number")
    return LowRankFactor(tensors[f"{key}.U"], tensors[f"{key}.s"], sigma[0])


def _pack(m: Tensor) -> Tensor:
    """Upper triangle of a symmetric matrix, row by row (half the bytes)."""
    i, j = torch.triu_indices(m.shape[0], m.shape[1], device=m.device)
    return m[i, j].contiguous()


def _unpack(v: Tensor) -> Tensor:
    """Inverse of :func:`_pack`."""
    n = int((-1 + (1 + 8 * v.numel()) ** 0.5) / 2)
    if n * (n + 1) // 2 != v.numel():
        raise ValueError(f"{v.numel()} is not a triangular number")
    i, j = torch.triu_indices(n, n)
    m = v.new_zeros(n, n)
    m[i, j] = v
    m[j, i] = v
    return m
