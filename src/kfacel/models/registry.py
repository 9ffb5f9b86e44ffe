"""Model names to classes, and model directories on disk.

A model directory holds ``model.safetensors`` (the state dict), ``config.json``
(``{"format": "kfacel-model/1", "model": name, "config": {...}, ...}`` plus whatever the
caller adds, such as the collator settings and the task it was trained on) and the
tokenizer files the caller copies in. ``is_model_dir`` tells kfacel's model directories
(``format``, or an older one's registered ``model`` with its settings) from any other
checkpoint, such as a Hugging Face one, which kfacel never replaces. It is written to a
temporary sibling directory (with the user's umask, not ``mkdtemp``'s 0700) and renamed
into place, so a reader never sees half a model and an interrupted save leaves the old
one intact; an existing directory is replaced only when the caller's ``replace`` accepts
it right before the rename (``_io.atomic_dir``).
Loading refuses, naming the file, a ``config.json`` that is not a JSON object with a
known ``model`` and a ``config`` object of its settings, and a ``model.safetensors``
that safetensors cannot read (truncated), that holds NaN or ±inf (naming the tensor),
whose SHA-256 differs from the one ``config.json`` recorded at save (``weights_sha256``:
a flipped bit that leaves every number finite), or whose tensors do not fit the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kfacel._io import atomic_dir, recover, umask_mode
from kfacel.models.bert import BertRanker, BertRankerConfig
from kfacel.models.cnn import CNNConfig, CNNRanker
from kfacel.types import STATES_DIR

MODELS: dict[str, tuple[type[Any], type[Any]]] = {
    "cnn": (CNNConfig, CNNRanker),
    "transformer": (BertRankerConfig, BertRanker),
}
"""Model name to (config dataclass, ranker class)."""

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
WEIGHTS_DIGEST = "weights_sha256"
"""Key of ``config.json``: the SHA-256 of ``model.safetensors`` as it was saved."""
MODEL_FORMAT = "kfacel-model/1"
"""The ``format`` of a model directory's ``config.json``: the mark of kfacel's own."""
FILES_KEY = "files"
"""Key of ``config.json``: the entries the save wrote into the directory, each file's
SHA-256 (None for a folder, for ``config.json`` itself and for the weights, whose digest
is ``WEIGHTS_DIGEST``, checked by ``load_model``)."""


def model_name(model: nn.Module) -> str:
    """The registry name of a ranker instance."""
    for name, (_, cls) in MODELS.items():
        if isinstance(model, cls):
            return name
    raise ValueError(f"{type(model).__name__} is not a registered ranker")


def build_model(name: str, **config: Any) -> nn.Module:
    """A fresh ranker ``name`` (``cnn`` or ``transformer``) with the given settings.

    Raises:
        ValueError: for an unknown name or setting.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: {sorted(known)}")
    return model_cls.create(config_cls(**config))


def is_model_dir(directory: str | Path) -> bool:
    """Whether ``directory`` is a model directory kfacel wrote.

    Its weights file is there and its ``config.json`` carries ``MODEL_FORMAT``, or
    (written before the mark) names a registered model with an object of that model's
    settings and none of a Hugging Face configuration's keys. A Hugging Face
    checkpoint, which also holds ``config.json`` and ``model.safetensors``, never counts.
    """
    if not (Path(directory) / WEIGHTS_FILE).is_file():
        return False
    try:
        meta = read_model_config(directory)
    except (OSError, ValueError):
        return False
    if meta.get("format") == MODEL_FORMAT:
        return True
    name, settings = meta.get("model"), meta.get("config")
    if "format" in meta or not isinstance(name, str) or name not in MODELS:
        return False
    known = {f.name for f in fields(MODELS[name][0])}
    hf_keys = {"architectures", "model_type", "transformers_version"}
    return (
        isinstance(settings, dict)
        and set(settings) <= known
        and not hf_keys & meta.keys()
    )


def foreign_entries(directory: str | Path) -> list[str]:
    """The entries of a kfacel model directory that kfacel did not write there.

    ``config.json`` lists what the save wrote (``FILES_KEY``); ``consolidation/`` is
    kfacel's too (``kfacel consolidate`` adds it later). A directory saved before the
    list was kept has none to compare with and is taken as kfacel's whole.
    """
    written = read_model_config(directory).get(FILES_KEY)
    if not isinstance(written, dict):
        return []
    own = {*map(str, written), STATES_DIR}
    return sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in Path(directory).iterdir()
        if p.name not in own
    )


def check_saved_files(
    directory: str | Path, *, skip: frozenset[str] = frozenset()
) -> None:
    """Refuse a file of a model directory that differs from the one its save wrote.

    Each file recorded under ``FILES_KEY`` with a digest (tokenizer files, alias
    tables, …) is compared; ``skip`` names files whose content does not reach a result
    (a training log). A directory saved before digests were kept is not checked.

    Raises:
        ValueError: naming the file that is missing or differs.
    """
    meta = read_model_config(directory)
    written = meta.get(FILES_KEY)
    if not isinstance(written, dict):
        return
    for name, digest in written.items():
        file = Path(directory) / str(name)
        if not isinstance(digest, str) or name in skip:
            continue
        if not file.is_file():
            raise ValueError(f"{file} is missing: the model was saved with it")
        if file_sha256(file) != digest:
            raise ValueError(
                f"{file} differs from the file saved with the model (SHA-256 in "
                f"{Path(directory) / CONFIG_FILE}): damaged or replaced; restore it or "
                "train the model again"
            )


def replaceable_model_dir(directory: str | Path) -> bool:
    """Whether ``directory`` is a kfacel model directory holding only kfacel's files."""
    return is_model_dir(directory) and not foreign_entries(directory)


def save_model(
    model: nn.Module,
    directory: str | Path,
    *,
    extra: dict[str, Any] | None = None,
    write_files: Callable[[Path], None] | None = None,
    replace: Callable[[Path], bool] | None = replaceable_model_dir,
) -> Path:
    """Write ``model`` to ``directory`` atomically.

    Args:
        model: a registered ranker (unwrapped from DDP).
        directory: the model directory.
        extra: more top-level keys of ``config.json`` (e.g. collator settings).
        write_files: called with the temporary directory to add files (tokenizer,
            training log) before it is renamed into place.
        replace: whether an existing non-empty ``directory`` may be replaced, checked
            right before the rename (default: when it is a kfacel model directory);
            None: it may not.

    Returns:
        The directory.

    Raises:
        ValueError: when ``directory`` holds something ``replace`` does not accept.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = cast(Any, model).config  # every ranker carries its frozen config dataclass
    meta = {
        "format": MODEL_FORMAT,
        "model": model_name(model),
        "config": asdict(config),
        **{k: v for k, v in (extra or {}).items() if k != "format"},
    }

    def write(tmp: Path) -> None:
        state = {
            k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        save_file(state, str(tmp / WEIGHTS_FILE))
        os.chmod(tmp / WEIGHTS_FILE, umask_mode())  # safetensors writes 0600
        meta[WEIGHTS_DIGEST] = file_sha256(tmp / WEIGHTS_FILE)
        if write_files is not None:
            write_files(tmp)
        meta[FILES_KEY] = {
            p.name: file_sha256(p) if p.is_file() else None
            for p in sorted(tmp.iterdir())
            if p.name not in (CONFIG_FILE, WEIGHTS_FILE)
        } | {CONFIG_FILE: None, WEIGHTS_FILE: None}  # the weights': WEIGHTS_DIGEST
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", "utf-8")

    atomic_dir(directory, write, replace=replace)
    return directory


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory.

    A model directory that a killed writer left moved aside (``.NAME.old-PID``) is put
    back first (``kfacel._io.recover``).

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file when it is not UTF-8 JSON holding an object.
    """
    file = Path(directory) / CONFIG_FILE
    if not file.is_file():
        recover(directory)  # a writer killed mid-swap left the model moved aside
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: not a model directory")
    try:
        meta = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(meta).__name__}")
    return meta


def load_model(directory: str | Path) -> nn.Module:
    """The ranker saved in ``directory``, in eval mode on the CPU.

    Raises:
        FileNotFoundError: when a file is missing.
        ValueError: when the weights are not those saved (digest), hold a non-finite
            value or do not match the configuration.
    """
    meta = read_model_config(directory)
    file = Path(directory) / CONFIG_FILE
    name = meta.get("model")
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"{file}: unknown model {name!r}; known: {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    settings = meta.get("config")
    if not isinstance(settings, dict):
        raise ValueError(f"{file}: 'config' must be a JSON object of {name} settings")
    try:
        config = config_cls(**settings)
    except TypeError as exc:
        raise ValueError(f"{file}: bad {name} settings ({exc})") from None
    model = model_cls(config, pretrained=False)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ValueError(
            f"{weights}: not a readable safetensors file ({exc})"
        ) from None
    _check_finite(state, weights)
    _check_digest(weights, meta.get(WEIGHTS_DIGEST), file)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ from the configuration
        first = str(exc).strip().splitlines()[-1].strip()
        raise ValueError(f"{weights}: does not fit {file}: {first}") from None
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{weights}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (hex), read in blocks."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _check_digest(weights: Path, recorded: Any, config: Path) -> None:
    """Refuse weights whose SHA-256 differs from the one saved beside them.

    A model saved before digests were recorded (no ``weights_sha256``) is not checked.
    """
    if recorded is None:
        return
    if file_sha256(weights) != recorded:
        raise ValueError(
            f"{weights}: its SHA-256 differs from the {WEIGHTS_DIGEST} {config} "
            "recorded at save: the file was changed or damaged since"
        )


def _check_finite(state: dict[str, Tensor], weights: Path) -> None:
    """Refuse a floating-point tensor holding NaN or ±inf, naming it."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{weights}: tensor {name!r} holds NaN or infinite values")
