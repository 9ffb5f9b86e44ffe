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

The estimators also say how the rows of a layer call must relate to the batch's
examples (``row_layout``): a model may regroup rows (encode repeated names once, chunk
rows by length) only as far as the statistics being recorded allow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum

from torch import Tensor


class RowLayout(Enum):
    """How the rows of a layer call may relate to the examples of the batch.

    ``FREE``: nothing is recorded; a row may stand for several examples (a name
    repeated across queries encoded once). ``OWN``: every row belongs to one example,
    but a call may hold any rows in any order (K-FAC's expanded statistics are sums
    over positions). ``BY_EXAMPLE``: every call holds whole examples along its first
    dimension, in the batch's order (per-example gradients, K-FAC-reduce).
    """

    FREE = "free"
    OWN = "own"
    BY_EXAMPLE = "by-example"


_LAYOUT: ContextVar[RowLayout] = ContextVar("kfacel_row_layout", default=RowLayout.FREE)


@contextmanager
def rows_laid_out(layout: RowLayout) -> Iterator[None]:
    """Within the block, layer calls follow ``layout`` (set by the estimators)."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


_REGROUPED: ContextVar[bool] = ContextVar("kfacel_regrouped_rows", default=False)


@contextmanager
def regrouped_rows() -> Iterator[None]:
    """Mark layer calls whose rows a model regrouped (chunks by length, ``OWN``).

    Each row is still one example's own, but a call's first dimension is no longer
    the batch's examples; an estimator accepts such calls only under ``OWN``.
    """
    token = _REGROUPED.set(True)
    try:
        yield
    finally:
        _REGROUPED.reset(token)


def rows_regrouped() -> bool:
    """True inside ``regrouped_rows``."""
    return _REGROUPED.get()


def row_layout() -> RowLayout:
    """The row layout layer calls must follow now (``FREE`` outside any estimator).

    >>> with rows_laid_out(RowLayout.OWN):
    ...     row_layout()
    <RowLayout.OWN: 'own'>
    >>> row_layout()
    <RowLayout.FREE: 'free'>
    """
    return _LAYOUT.get()


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
