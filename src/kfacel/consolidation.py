"""Consolidation state on disk: each finished task's anchor and curvature.

A model directory holds ``consolidation/NN-<task>.safetensors`` (tensors) and
``consolidation/NN-<task>.json`` (method, Fisher kind, example count, task name, coverage)
per finished task, in order. Kronecker factors are symmetric and stored as their upper
triangle. Nothing is pickled; files are written to a temporary name and renamed, so a
crash never leaves half a state. Loading checks every name and shape against the model
and refuses a mismatch, naming what differs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kfacel.curvature.factors import DiagonalFisher, KFACFisher, KroneckerFactors
from kfacel.curvature.layers import LayerKind, fold
from kfacel.penalties import (
    DiagonalEWCPenalty,
    KFACPenalty,
    L2Penalty,
    NoPenalty,
    Penalty,
)
from kfacel.types import FisherKind, ParamDict

FORMAT = 1
METHODS = ("kfac", "ewc", "l2")
Curvature = KFACFisher | DiagonalFisher | None


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


def state_dir(model_dir: Path | str) -> Path:
    """Where a model directory keeps its consolidation states."""
    return Path(model_dir) / "consolidation"


def save_state(model_dir: Path | str, state: TaskState) -> Path:
    """Append ``state`` as the next finished task of ``model_dir``; returns its JSON path."""
    if state.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {state.method!r}")
    out = state_dir(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{len(_stems(out)):02d}-{_slug(state.task)}"
    meta = {**state.meta, **_describe(state), "format": FORMAT}
    _atomic(out / f"{stem}.safetensors", lambda p: save_file(_tensors(state), str(p)))
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic(out / f"{stem}.json", lambda p: p.write_text(text, encoding="utf-8"))
    return out / f"{stem}.json"


def load_state(
    model_dir: Path | str, model: nn.Module | None = None
) -> tuple[TaskState, ...]:
    """Every finished task's state, in order; checked against ``model`` when given.

    Raises:
        ValueError: a file is malformed, or names or shapes differ from the model (listed).
    """
    out = state_dir(model_dir)
    states = []
    for stem in _stems(out):
        meta_path = out / f"{stem}.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{meta_path}: cannot read consolidation metadata: {exc}"
            ) from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}")
        tensors = load_file(str(out / f"{stem}.safetensors"))
        state = _rebuild(meta, tensors, meta_path)
        if model is not None:
            check_state(state, model, where=str(meta_path))
        states.append(state)
    return tuple(states)


def copy_states(src: Path | str, dst: Path | str) -> None:
    """Carry the consolidation states of ``src`` forward into model directory ``dst``."""
    for stem in _stems(state_dir(src)):
        for suffix in (".safetensors", ".json"):
            data = (state_dir(src) / f"{stem}{suffix}").read_bytes()
            state_dir(dst).mkdir(parents=True, exist_ok=True)
            _atomic(
                state_dir(dst) / f"{stem}{suffix}", lambda p, d=data: p.write_bytes(d)
            )


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
) -> Penalty:
    """The penalty with one term per state, eq. (P1); ``method="none"`` gives no penalty.

    Raises:
        ValueError: no state to penalize, λ count differs, or a state's curvature does
            not fit the method (a K-FAC penalty needs K-FAC states, EWC diagonal ones).
    """
    if method == "none":
        return NoPenalty()
    if not states:
        raise ValueError(
            f"penalty {method!r} needs a consolidated task; run `kfacel consolidate`"
        )
    if len(lams) != len(states):
        raise ValueError(f"{len(states)} consolidated tasks but {len(lams)} λ values")
    penalty: Any
    if method == "kfac":
        penalty = KFACPenalty(damping=damping)
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
    out = {f"anchor/{k}": v.contiguous() for k, v in state.anchor.items()}
    c = state.curvature
    if isinstance(c, KFACFisher):
        for name, f in c.items():
            out |= {f"kfac/{name}/G": _pack(f.G)}
            out |= {f"kfac/{name}/A": f.A.contiguous() if f.A.ndim == 1 else _pack(f.A)}
        out |= {f"diag/{k}": v.contiguous() for k, v in c.diagonal.items()}
    elif isinstance(c, DiagonalFisher):
        out |= {f"diag/{k}": v.contiguous() for k, v in c.items()}
    return out


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
            for name, layer in meta["layers"].items():
                kind = LayerKind(layer["kind"])
                A = tensors[f"kfac/{name}/A"]
                factors[name] = KroneckerFactors(
                    A if kind is LayerKind.EMBEDDING else _unpack(A),
                    _unpack(tensors[f"kfac/{name}/G"]),
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
            )
        elif meta["method"] == "ewc":
            curvature = DiagonalFisher(
                diag, FisherKind(meta["fisher_kind"]), int(meta["num_examples"])
            )
    except (KeyError, ValueError) as exc:
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
    if not directory.is_dir():
        return []
    return sorted(
        p.stem for p in directory.glob("*.json") if re.match(r"\d\d-", p.name)
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "task"


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def states_nbytes(states: Mapping[str, TaskState] | Sequence[TaskState]) -> int:
    """Total bytes of several states."""
    items = states.values() if isinstance(states, Mapping) else states
    return sum(s.nbytes() for s in items)
