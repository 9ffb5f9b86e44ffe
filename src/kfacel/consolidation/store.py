"""Consolidation states on disk: one pair of files per finished task, in order.

A model directory holds ``consolidation/NN-<task>.safetensors`` (tensors) and
``consolidation/NN-<task>.json`` (method, Fisher kind, K-FAC approximation, example
count, task name, coverage) per finished task, in the numeric order of ``NN`` (two
digits or more: ``100-…`` follows ``99-…``); a state without ``approx``
predates K-FAC-reduce and is ``expand``. The tensors are the state's flat form
(``kfacel.consolidation.state.stored_tensors``). Nothing is pickled; files are written
to a temporary name and renamed, so a crash never leaves half a state. Loading checks
every name and shape against the model and refuses a mismatch, naming what differs,
and refuses damaged tensors, naming the file and the tensor
(``kfacel.consolidation.checks``).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from kfacel._io import atomic_write, atomic_write_text
from kfacel.consolidation.checks import (
    check_anchor,
    check_curvature,
    check_state,
    check_tensors,
    psd_curvature,
)
from kfacel.consolidation.state import (
    METHODS,
    SHARED_FACTORS,
    TaskState,
    describe,
    from_stored,
    stored_tensors,
)
from kfacel.types import STATES_DIR

FORMAT = 1
"""Version of the metadata layout; a state of another format is refused."""


def state_dir(model_dir: Path | str) -> Path:
    """Where a model directory keeps its consolidation states."""
    return Path(model_dir) / STATES_DIR


def save_state(model_dir: Path | str, state: TaskState) -> Path:
    """Append ``state`` as the next finished task of ``model_dir``; returns its JSON path."""
    if state.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {state.method!r}")
    curvature = psd_curvature(state.curvature, f"task {state.task!r}")  # what loads
    state = replace(state, curvature=curvature)
    out = state_dir(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{len(_stems(out)):02d}-{_slug(state.task)}"
    tensors, shared = stored_tensors(state)
    meta = {**state.meta, **describe(state), "format": FORMAT}
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
        state = from_stored(meta, tensors, meta_path)
        check_curvature(state.curvature, meta.get(SHARED_FACTORS, {}), tensor_path)
        if model is not None:
            check_state(state, model, where=str(meta_path))
            check_anchor(state.anchor, dict(model.named_parameters()), tensor_path)
        states.append(state)
    return tuple(states)


def state_tasks(model_dir: Path | str) -> list[str]:
    """The task names of ``model_dir``'s states, in order, from their metadata alone.

    Raises:
        ValueError: a metadata file is unreadable or of another format (named).
    """
    out = state_dir(model_dir)
    return [str(_read_meta(out / f"{stem}.json").get("task")) for stem in _stems(out)]


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
    """A task name as a file stem: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "task"


def _read_meta(path: Path) -> dict[str, Any]:
    """A state's metadata, refused when unreadable, not an object or of another format."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError
        raise ValueError(f"{path}: cannot read consolidation metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: consolidation metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {meta.get('format')!r}")
    return meta
