"""The arithmetic a ranker's forward pass runs in: float32, or mixed precision.

``precision`` is one of ``PRECISIONS``:

- ``auto`` (the default): float16 mixed precision with a gradient scaler on CUDA,
  float32 on the CPU (what kfacel always did);
- ``float32``: float32 everywhere;
- ``bfloat16``: bfloat16 autocast on either device. Matrix products and attention run in
  bfloat16 while the weights, their gradients, the optimizer's state and the loss stay
  float32 (``torch.autocast``: master weights in float32), so no gradient scaler is
  needed (bfloat16 has float32's exponent range). The consolidation penalty's products
  (``G Δ A``, eq. P3) run in bfloat16 too (``penalty_autocast``); Δ = θ − θ* is formed in
  float32 first, so its small values keep bfloat16's relative precision (2⁻⁸), and the
  gradient is added to the float32 ``.grad``. On CPUs with bfloat16 matrix units
  (Intel AMX, ``amx_bf16``) this is several times faster than float32 for the
  transformer's Linear layers; on older CPUs it can be slower.

Curvature (K-FAC, diagonal Fisher) is always estimated in float32: its factors are sums
of many small outer products.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "float32", "bfloat16")
"""The values of ``TrainSettings.precision`` and of ``--precision``."""


def autocast_dtype(device: torch.device | str, precision: str) -> torch.dtype | None:
    """The dtype autocast runs in on ``device`` for ``precision`` (None: float32).

    >>> autocast_dtype("cpu", "auto") is None
    True
    >>> autocast_dtype("cpu", "bfloat16")
    torch.bfloat16

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "auto" and kind == "cuda":
        return torch.float16
    return None


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The ``torch.autocast`` context of ``precision`` on ``device`` (module doc)."""
    dtype = autocast_dtype(device, precision)
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)


def penalty_autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The context the penalty's gradient is computed in: bfloat16 autocast or none.

    Never float16: a Fisher's large entries times Δ can overflow its range, and the
    penalty's gradient is added after the gradient scaler's unscaling.
    """
    bfloat16 = autocast_dtype(device, precision) is torch.bfloat16
    return autocast(device, precision if bfloat16 else "float32")


def needs_scaler(device: torch.device | str, precision: str) -> bool:
    """Whether the loss is scaled against float16 underflow (float16 autocast only)."""
    return autocast_dtype(device, precision) is torch.float16
