"""Gram sums ``Σ_r x_r x_rᵀ`` kept on and above the diagonal, mirrored once at the end.

A Kronecker factor is symmetric, so half of ``xᵀx`` is redundant. BLAS's ``syrk`` would
skip it; PyTorch has none, so the rows are cut into panels of ``PANEL`` coordinates and
panel ``i`` adds ``x_iᵀ [x_i … x_last]``, the block row right of and on the diagonal. At
1,536 coordinates (a BERT feed-forward layer) that is 7/12 of the products; below
``PANEL`` it is one ordinary product. Below the diagonal the sums are partial and
meaningless until :func:`mirror_upper_` copies the upper triangle there.
"""

from __future__ import annotations

import torch
from torch import Tensor

PANEL = 256  # coordinates per panel: wide enough for BLAS to run at speed


def add_upper_gram_(out: Tensor, rows: Tensor) -> Tensor:
    """``out += rowsᵀ rows`` on and above the diagonal (block rows of ``PANEL``).

    Args:
        out: ``[d, d]`` running sum; its strict lower triangle is left unspecified.
        rows: ``[P, d]`` rows of the sum, in ``out``'s dtype.

    Returns: ``out``.
    """
    d = rows.shape[1]
    for start in range(0, d, PANEL):
        stop = min(start + PANEL, d)
        out[start:stop, start:].addmm_(rows[:, start:stop].T, rows[:, start:])
    return out


def upper_gram(rows: Tensor) -> Tensor:
    """A new ``[d, d]`` sum ``rowsᵀ rows`` on and above the diagonal."""
    d = rows.shape[1]
    return add_upper_gram_(rows.new_zeros(d, d), rows)


def mirror_upper_(t: Tensor) -> Tensor:
    """Copy the upper triangle of a square matrix below its diagonal, in place.

    The result is exactly symmetric, as the state on disk (one triangle) needs.
    A vector (an Embedding's counts) is returned as it is.
    """
    if t.ndim == 2:
        lower = torch.ones_like(t, dtype=torch.bool).tril_(-1)
        t.copy_(torch.where(lower, t.T, t))
    return t
