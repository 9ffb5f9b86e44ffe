"""Consolidation state on disk: each finished task's anchor and curvature.

A model directory holds ``consolidation/NN-<task>.safetensors`` (tensors) and
``consolidation/NN-<task>.json`` (method, Fisher kind, K-FAC approximation, example
count, task name, coverage) per finished task, in the numeric order of ``NN`` (two
digits or more: ``100-…`` follows ``99-…``); a state without ``approx``
predates K-FAC-reduce and is ``expand``. Kronecker factors are symmetric and stored as
their upper triangle, or, kept low-rank (K10, ``compress_factors``), as ``<key>.U``,
``.s`` and ``.sigma``; equal factors (layers that read the same input) are stored once,
and the metadata's ``shared_factors`` maps the others to it. Nothing is pickled; files
are written to a temporary name and renamed, so a crash never leaves half a state.
Loading checks every name and shape against the model and refuses a mismatch, naming
what differs, and refuses damaged tensors, naming the file and the tensor
(``kfacel._state_checks``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kfacel._io import atomic_write, atomic_write_text
from kfacel._state_checks import (
    check_anchor,
    check_curvature,
    check_tensors,
    psd_curvature,
)
from kfacel.curvature.diagonal import estimate_diagonal
from kfacel.curvature.factors import (
    DiagonalFisher,
    Factor,
    KFACFisher,
    KroneckerFactors,
    LowRankFactor,
)
from kfacel.curvature.kfac import estimate_kfac
from kfacel.curvature.layers import LayerKind, fold
from kfacel.penalties import (
    DiagonalEWCPenalty,
    KFACPenalty,
    L2Penalty,
    NoPenalty,
    Penalty,
)
from kfacel.penalties.ewc_kfac import check_damping_kind
from kfacel.types import ConsolidationMethod, FisherKind, KFACApprox, ParamDict

FORMAT = 1
METHODS = tuple(m.value for m in ConsolidationMethod)
Curvature = KFACFisher | DiagonalFisher | None
SHARED_FACTORS = "shared_factors"
"""Metadata key: factor key to the key of an equal factor stored in its place."""
FACTOR_RANK = "factor_rank"
"""Key of a state's ``meta``: the rank its large Kronecker factors are kept at (K10)."""


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
        return sum(t.numel() * t.element_size() for t in _tensors(self).values())


def estimate_curvature(
    method: str,
    model: nn.Module,
    batches: Any,
    *,
    fisher: FisherKind | str,
    generator: torch.Generator | None = None,
    uncovered: str = "ignore",
    approx: KFACApprox | str = KFACApprox.EXPAND,
    progress: bool = False,
) -> Curvature:
    """The curvature ``method`` keeps: a K-FAC or diagonal Fisher, or None for ``l2``.

    ``batches`` yields ``(inputs, labels)`` as the estimators expect; ``uncovered`` and
    ``approx`` apply to K-FAC only.
    """
    if method == ConsolidationMethod.KFAC:
        return estimate_kfac(
            model, batches, kind=fisher, generator=generator,
            uncovered=uncovered, approx=approx, progress=progress,  # type: ignore[arg-type]
        )  # fmt: skip
    if method == ConsolidationMethod.EWC:
        return estimate_diagonal(
            model, batches, kind=fisher, generator=generator, progress=progress
        )
    return None


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


def state_dir(model_dir: Path | str) -> Path:
    """Where a model directory keeps its consolidation states."""
    return Path(model_dir) / "consolidation"


def save_state(model_dir: Path | str, state: TaskState) -> Path:
    """Append ``state`` as the next finished task of ``model_dir``; returns its JSON path."""
    if state.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {state.method!r}")
    curvature = psd_curvature(state.curvature, f"task {state.task!r}")  # what loads
    state = replace(state, curvature=curvature)
    out = state_dir(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{len(_stems(out)):02d}-{_slug(state.task)}"
    tensors, shared = _layout(state)
    meta = {**state.meta, **_describe(state), "format": FORMAT}
    meta.pop(SHARED_FACTORS, None)  # a loaded state's map described its old file
    if shared:
        meta[SHARED_FACTORS] = shared
    atomic_write(out / f"{stem}.safetensors", lambda p: save_file(tensors, str(p)))
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    atomic_write_text(out / f"{stem}.json", text)
    return out / f"{stem}.json"


def load_state(
    model_dir: Path | str, model: nn.Module | None = None
) -> tuple[TaskState, ...]:
    """Every finished task's state, in order; checked against ``model`` when given.

    Raises:
        ValueError: a file is malformed or unreadable, a tensor has a wrong dtype, a
            non-finite value or negative curvature (named), names or shapes differ
            from the model (listed), or an anchor is damaged: its penalty overflows
            at the model's weights (``check_anchor``).
    """
    out = state_dir(model_dir)
    states = []
    for stem in _stems(out):
        meta_path = out / f"{stem}.json"
        meta = _read_meta(meta_path)
        tensor_path = out / f"{stem}.safetensors"
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(
                f"{tensor_path}: not a readable safetensors file ({exc})"
            ) from None
        check_tensors(tensors, tensor_path)
        state = _rebuild(meta, tensors, meta_path)
        check_curvature(state.curvature, meta.get(SHARED_FACTORS, {}), tensor_path)
        if model is not None:
            check_state(state, model, where=str(meta_path))
            check_anchor(state.anchor, dict(model.named_parameters()), tensor_path)
        states.append(state)
    return tuple(states)


def check_state(state: TaskState, model: nn.Module, *, where: str = "state") -> None:
    """Refuse a state whose names or shapes do not match ``model``, naming them."""
    params = dict(model.named_parameters())
    problems = []
    for name, t in state.anchor.items():
        if name not in params:
            problems.append(f"{name} is not a parameter of the model")
        elif t.shape != params[name].shape:
            problems.append(
                f"{name}: state {tuple(t.shape)}, model {tuple(params[name].shape)}"
            )
    if isinstance(state.curvature, KFACFisher):
        for name, f in state.curvature.items():
            if f.weight in params and (f.bias is None or f.bias in params):
                bias = params[f.bias] if f.bias else None
                shape = tuple(fold(f.kind, params[f.weight], bias).shape)
                if shape != f.shape:
                    problems.append(
                        f"{name}: factors for {f.shape}, model layer is {shape}"
                    )
    if problems:
        raise ValueError(
            f"{where}: consolidation state of task {state.task!r} does not match the model: "
            + "; ".join(problems)
        )


def build_penalty(
    method: str,
    states: Sequence[TaskState],
    lams: Sequence[float],
    *,
    damping: float = 0.0,
    damping_kind: str = "uniform",
) -> Penalty:
    """The penalty with one term per state, eq. (P1); ``method="none"`` gives no penalty.

    ``damping_kind="factored"`` damps a K-FAC penalty's factors, eq. (P4).

    Raises:
        ValueError: no state to penalize, λ count differs, a state's curvature does
            not fit the method (a K-FAC penalty needs K-FAC states, EWC diagonal ones),
            or factored damping for a penalty other than ``kfac``.
    """
    if method == "none":
        return NoPenalty()
    if not states:
        raise ValueError(
            f"penalty {method!r} needs a consolidated task; run `kfacel consolidate`"
        )
    if len(lams) != len(states):
        raise ValueError(f"{len(states)} consolidated tasks but {len(lams)} λ values")
    check_damping_kind(damping_kind, method)
    penalty: Any
    if method == "kfac":
        penalty = KFACPenalty(damping=damping, damping_kind=damping_kind)
    elif method == "ewc":
        penalty = DiagonalEWCPenalty(damping=damping)
    elif method == "l2":
        penalty = L2Penalty()
    else:
        raise ValueError(f"unknown penalty {method!r}; choose none, l2, ewc or kfac")
    for state, lam in zip(states, lams, strict=True):
        want = {"kfac": KFACFisher, "ewc": DiagonalFisher}.get(method)
        if want is not None and not isinstance(state.curvature, want):
            raise ValueError(
                f"task {state.task!r} was consolidated with {state.method!r}; "
                f"penalty {method!r} needs `kfacel consolidate --method {method}`"
            )
        penalty = penalty.add_task(state.anchor, state.curvature, lam=lam)
    result: Penalty = penalty
    return result


# ------------------------------------------------------------------------- internals


def _tensors(state: TaskState) -> dict[str, Tensor]:
    return _layout(state)[0]


def _layout(state: TaskState) -> tuple[dict[str, Tensor], dict[str, str]]:
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


def _describe(state: TaskState) -> dict[str, Any]:
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


def _rebuild(meta: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> TaskState:
    try:
        anchor = {k[7:]: v for k, v in tensors.items() if k.startswith("anchor/")}
        diag = {k[5:]: v for k, v in tensors.items() if k.startswith("diag/")}
        curvature: Curvature = None
        if meta["method"] == "kfac":
            factors = {}
            shared = meta.get(SHARED_FACTORS, {})
            read: dict[str, Factor] = {}  # an equal factor is read once

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
            curvature = KFACFisher(
                factors,
                FisherKind(meta["fisher_kind"]),
                int(meta["num_examples"]),
                tuple(meta.get("uncovered", ())),
                diag,
                KFACApprox(meta.get("approx", KFACApprox.EXPAND)),
            )
        elif meta["method"] == "ewc":
            curvature = DiagonalFisher(
                diag, FisherKind(meta["fisher_kind"]), int(meta["num_examples"])
            )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed consolidation state ({exc})") from exc
    return TaskState(meta["task"], meta["method"], anchor, curvature, meta)


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


def _stems(directory: Path) -> list[str]:
    """The states' file stems ``N-<task>``, in the order of ``N`` (a number, not text).

    ``N`` has two digits or more: ``09-a`` comes before ``10-b`` and ``99-c`` before
    ``100-d``.
    """
    if not directory.is_dir():
        return []
    numbered = (
        (int(m.group(1)), p.stem)
        for p in directory.glob("*.json")
        if (m := re.match(r"(\d{2,})-", p.name))
    )
    return [stem for _, stem in sorted(numbered)]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "task"


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError
        raise ValueError(f"{path}: cannot read consolidation metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: consolidation metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {meta.get('format')!r}")
    return meta


def states_nbytes(states: Mapping[str, TaskState] | Sequence[TaskState]) -> int:
    """Total bytes of several states."""
    items = states.values() if isinstance(states, Mapping) else states
    return sum(s.nbytes() for s in items)
