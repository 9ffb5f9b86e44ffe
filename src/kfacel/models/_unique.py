"""Encode each distinct candidate name of a batch once.

A batch holds ``N × C`` candidate names, and many repeat across queries (same mention
in one document, frequent concepts): in PUBLIC-3's test batches of 128 queries only 83%
(MedMentions), 37% (NCBI) and 30% (CADEC) of the names are distinct. ``encode_rows``
runs the encoder on the distinct rows only, in chunks of similar length cut to their own
longest row (``encode_by_length``), and copies their encodings back, which gives the same
values up to float rounding and, through the gather's backward, the same gradients.

It must not be used while the curvature code records layer inputs and output gradients
per example: a distinct row then stands for rows of several queries. The estimators run
the model in eval mode with gradients on, so the rankers deduplicate only in training
mode or without gradients (``should_dedup``). In training mode duplicates share one
dropout mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def should_dedup(module: nn.Module) -> bool:
    """True in training mode or when no gradients are taken (never in curvature)."""
    return module.training or not torch.is_grad_enabled()


def encode_rows(
    ids: Tensor, mask: Tensor, encode: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """``encode(ids, mask)`` ``[B, D]``, computed once per distinct (ids, mask) row.

    Args:
        ids: ``[B, S]`` token ids.
        mask: ``[B, S]`` bool, True at real tokens.
        encode: maps ``([U, S], [U, S])`` to pooled encodings ``[U, D]``.

    Returns:
        ``[B, D]`` encodings.

    >>> ids = torch.tensor([[5, 6], [7, 0], [5, 6]])
    >>> calls = []
    >>> out = encode_rows(ids, ids > 0, lambda i, m: calls.append(len(i)) or i.float())
    >>> out.tolist(), calls
    ([[5.0, 6.0], [7.0, 0.0], [5.0, 6.0]], [2])
    """
    key = ids.masked_fill(~mask, -1)  # padding ids do not tell rows apart
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # [B]
    rows = torch.arange(len(ids), device=ids.device)
    first = torch.full(
        (int(inverse.max()) + 1,), len(ids), dtype=rows.dtype, device=ids.device
    ).scatter_reduce(0, inverse, rows, reduce="amin")  # [U] first row of each
    # index_select: its backward (index_add_) is deterministic on the CPU, the
    # backward of advanced indexing (index_put_ with accumulate) is not with threads
    distinct = encode_by_length(ids[first], mask[first], encode)  # [U, D]
    return distinct.index_select(0, inverse)  # [B, D]


def encode_by_length(
    ids: Tensor,
    mask: Tensor,
    encode: Callable[[Tensor, Tensor], Tensor],
    chunk: int = 64,
) -> Tensor:
    """``encode(ids, mask)`` ``[B, D]``, in chunks of rows of similar length.

    Rows are right-padded (real tokens first); sorted by length, each chunk of
    ``chunk`` rows is cut to its own longest row, so the encoder sees far less padding
    (names padded to the batch's longest name are mostly padding). With attention
    masked and positions counted per row, the encodings equal those of one call up to
    float rounding.

    >>> ids = torch.tensor([[5, 6, 7], [8, 0, 0]])
    >>> encode_by_length(ids, ids > 0, lambda i, m: m.sum(1, keepdim=True).float(), 1)
    tensor([[3.],
            [1.]])
    """
    lengths = mask.sum(dim=1)  # [B]
    order = torch.argsort(lengths, stable=True)  # [B] shortest first
    parts = []
    for rows in order.split(chunk):
        width = max(int(lengths[rows].max()), 1)
        parts.append(encode(ids[rows, :width], mask[rows, :width]))
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order), device=order.device)
    return torch.cat(parts).index_select(0, back)  # [B, D] in the rows' order
