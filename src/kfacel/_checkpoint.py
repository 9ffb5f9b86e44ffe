"""Reading tensors of a local BERT-family checkpoint: no hub, no pickles.

Shared by the rankers (``models/``) and dense retrieval (``retrieval/dense.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from torch import Tensor

_PREFIXES = ("", "bert.", "model.", "encoder.")


def read_config(path: str | Path) -> dict:
    """The ``config.json`` of a checkpoint directory as a dict.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file when it is not a JSON object with ``vocab_size``
            and ``hidden_size``, or when it is a kfacel model directory's (a trained
            ranker, not an encoder).
    """
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist (need a local checkpoint)")
    try:
        config = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError
        raise ValueError(f"{file}: not a readable JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: not an encoder configuration (not a JSON object)")
    if "model" in config and "config" in config:
        raise ValueError(
            f"{path} is a kfacel model directory, not an encoder checkpoint: "
            f"continue from it with --init {path}, and give --encoder the "
            "checkpoint it was built from (or leave it out)"
        )
    missing = [k for k in ("vocab_size", "hidden_size") if k not in config]
    if missing:
        raise ValueError(
            f"{file}: not an encoder configuration (no {' or '.join(missing)})"
        )
    return config


def read_tensors(path: str | Path, names: list[str]) -> dict[str, Tensor]:
    """Tensors ``names`` (BertModel names) from ``model.safetensors`` of ``path``.

    Keys stored with a ``bert.``/``model.`` prefix are found too; names that are absent
    are left out of the result.

    Raises:
        FileNotFoundError: when the directory has no ``model.safetensors``.
        ValueError: naming the file and the tensor when one holds NaN or ±inf.
    """
    file = Path(path) / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist (need safetensors weights)")
    out: dict[str, Tensor] = {}
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        for name in names:
            for prefix in _PREFIXES:
                if prefix + name in keys:
                    out[name] = f.get_tensor(prefix + name)
                    break
            t = out.get(name)
            if t is not None and t.is_floating_point() and not t.isfinite().all():
                raise ValueError(
                    f"{file}: tensor {name!r} holds NaN or infinite values"
                )
    return out
