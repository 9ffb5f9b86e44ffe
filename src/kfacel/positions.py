"""Which positions of a layer's input are real: the protocol between models and curvature.

A layer applied to padded sequences sees padding positions that are not data. A model
marks the real positions around the call; the curvature estimators read the innermost
mark whose shape equals the layer input's position shape (everything but the last, or for
Conv1d the channel, dimension) and leave the other positions out of the statistics.

>>> import torch
>>> mask = torch.tensor([[True, False]])
>>> with valid_positions(mask):
...     matching_mask((1, 2)) is mask
True
>>> matching_mask((1, 2)) is None
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

_MASKS: ContextVar[tuple[Tensor, ...]] = ContextVar(
    "kfacel_valid_positions", default=()
)


@contextmanager
def valid_positions(mask: Tensor) -> Iterator[None]:
    """Mark the real positions of the layer calls made inside the block.

    Args:
        mask: bool tensor, True at real positions, shaped like the position dimensions
            of the layer inputs it is meant for (``[N, S]`` for ``[N, S, D]`` inputs).
    """
    token = _MASKS.set((*_MASKS.get(), mask.bool()))
    try:
        yield
    finally:
        _MASKS.reset(token)


def matching_mask(position_shape: tuple[int, ...]) -> Tensor | None:
    """The innermost active mask of exactly ``position_shape``, or None."""
    for mask in reversed(_MASKS.get()):
        if tuple(mask.shape) == tuple(position_shape):
            return mask
    return None


def active_masks() -> tuple[Tensor, ...]:
    """Every active mask, innermost first.

    The curvature estimators read them to learn how many rows a call's positions
    have: an input shared by the whole batch (``[1, S]``) stands for the rows of the
    innermost mask ``[R, S]`` that is active around the call.

    >>> import torch
    >>> with valid_positions(torch.ones(2, 3)), valid_positions(torch.ones(4, 3)):
    ...     [tuple(m.shape) for m in active_masks()]
    [(4, 3), (2, 3)]
    """
    return tuple(reversed(_MASKS.get()))
