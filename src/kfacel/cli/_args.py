"""Argparse ``type=`` converters that refuse a bad value before any work starts.

Each takes the option's text and returns the parsed value, or raises
``argparse.ArgumentTypeError``, which argparse prints as one line naming the option
(``kfacel link: error: argument --top: must be a positive integer, got '-2'``) before
exiting with code 2. ``positive_int`` accepts integers ≥ 1 (counts, sizes, threads,
``--top``); ``nonnegative_int`` integers ≥ 0 (seeds, context widths); ``finite_float``
any float but ``nan``, ``inf`` and values that overflow to them (``1e400``);
``positive_float`` finite floats > 0 (learning rates, λ); ``device`` a torch device
string this machine has: ``cpu``, ``cuda`` or ``cuda:N`` only when CUDA is available
and ``N`` is below the device count, ``mps`` only when MPS is available (torch is imported
only to check a device other than ``cpu``).
"""

from __future__ import annotations

import argparse
import math
import re

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    """An integer ≥ 1.

    >>> positive_int("3")
    3
    """
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer ≥ 0.

    >>> nonnegative_int("0")
    0
    """
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite.

    >>> finite_float("1e-3")
    0.001
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0.

    >>> positive_float("0.5")
    0.5
    """
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float ≥ 0.

    >>> nonnegative_float("0")
    0.0
    """
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, got {text!r}")
    return value


def device(text: str) -> str:
    """A torch device string that names a device this machine has.

    >>> device("cpu")
    'cpu'
    """
    name = text.strip().lower()
    if name == "cpu":
        return name
    import torch  # here, not above: parsing `--device cpu` and `--help` need no torch

    match = _CUDA.match(name)
    if match:
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: CUDA is not available here (torch {torch.__version__}); "
                "use --device cpu"
            )
        count = torch.cuda.device_count()
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s)"
            )
        return name
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here")
        return name
    raise argparse.ArgumentTypeError(
        f"unknown device {text!r}; use cpu, cuda or cuda:N"
    )
