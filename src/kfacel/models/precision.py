"""The arithmetic a ranker's forward pass runs in: float32, or mixed precision.

``precision`` is one of ``PRECISIONS``:

- ``auto`` (the default): float16 mixed precision with a gradient scaler on CUDA; on
  the CPU, bfloat16 autocast for a ranker whose class sets ``cpu_bfloat16 = True``
  (the transformer, whose Linear layers gain; not the CNN) when the CPU has bfloat16
  units (``cpu_has_bfloat16``), float32 otherwise (docs/training.md has the numbers);
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
from torch import nn

PRECISIONS = ("auto", "float32", "bfloat16")
"""The values of ``TrainSettings.precision`` and of ``--precision``."""


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 arithmetic units: AVX512-BF16 or AMX tiles.

    Without them bfloat16 autocast is emulated and can be slower than float32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(
    device: torch.device | str, precision: str, model: nn.Module | None = None
) -> torch.dtype | None:
    """The dtype autocast runs ``model`` in on ``device`` for ``precision`` (None: float32).

    >>> autocast_dtype("cpu", "float32") is None
    True
    >>> autocast_dtype("cpu", "bfloat16")
    torch.bfloat16

    ``model`` matters only to ``auto`` on the CPU (module doc).

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
    if precision == "auto" and kind == "cpu" and getattr(model, "cpu_bfloat16", False):
        return torch.bfloat16 if cpu_has_bfloat16() else None
    return None


def autocast(
    device: torch.device | str, precision: str, model: nn.Module | None = None
) -> torch.autocast:
    """The ``torch.autocast`` context of ``precision`` for ``model`` on ``device``."""
    dtype = autocast_dtype(device, precision, model)
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)


def penalty_autocast(
    device: torch.device | str, precision: str, model: nn.Module | None = None
) -> torch.autocast:
    """The context the penalty's gradient is computed in: bfloat16 autocast or none.

    Never float16: a Fisher's large entries times Δ can overflow its range, and the
    penalty's gradient is added after the gradient scaler's unscaling.
    """
    bfloat16 = autocast_dtype(device, precision, model) is torch.bfloat16
    return autocast(device, "bfloat16" if bfloat16 else "float32")


def needs_scaler(device: torch.device | str, precision: str) -> bool:
    """Whether the loss is scaled against float16 underflow (float16 autocast only)."""
    return autocast_dtype(device, precision) is torch.float16
