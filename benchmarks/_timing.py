"""The benchmarks' one timing rule: the minimum wall time over repeated runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def measure(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(min seconds over ``repeats`` runs, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result
