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

Within ``reusing_names(model)`` (evaluation: eval mode, no gradients, fixed weights) a
ranker also keeps each distinct name's encoding across calls, so a split is encoded once
per distinct name rather than once per batch: PUBLIC-3-small's dev sets hold 9,966
distinct names in 20,000 rows (MedMentions), 3,564 in 18,925 (NCBI), 442 in 6,730
(CADEC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def should_dedup(module: nn.Module) -> bool:
    """True in training mode or when no gradients are taken (never in curvature)."""
    return module.training or not torch.is_grad_enabled()


NameCache = dict[bytes, Tensor]


def should_reuse(module: nn.Module) -> NameCache | None:
    """The module's cache of name encodings, where it may be read: eval, no grad."""
    cache: NameCache | None = getattr(module, "name_cache", None)
    if cache is None or module.training or torch.is_grad_enabled():
        return None
    return cache


@contextmanager
def reusing_names(model: nn.Module) -> Iterator[None]:
    """Within: every ranker in ``model`` keeps its name encodings across calls.

    Only for evaluation, where the weights do not change: the cache is read in eval
    mode without gradients (``should_reuse``) and dropped on exit.
    """
    rankers = [m for m in model.modules() if hasattr(m, "name_cache")]
    for m in rankers:
        setattr(m, "name_cache", {})  # noqa: B010 (nn.Module's typed __setattr__)
    try:
        yield
    finally:
        for m in rankers:
            setattr(m, "name_cache", None)  # noqa: B010


def encode_rows(
    ids: Tensor,
    mask: Tensor,
    encode: Callable[[Tensor, Tensor], Tensor],
    cache: NameCache | None = None,
) -> Tensor:
    """``encode(ids, mask)`` ``[B, D]``, computed once per distinct (ids, mask) row.

    Args:
        ids: ``[B, S]`` token ids.
        mask: ``[B, S]`` bool, True at real tokens.
        encode: maps ``([U, S], [U, S])`` to pooled encodings ``[U, D]``.
        cache: encodings of rows seen in earlier calls, keyed by their real tokens;
            read and extended (no gradients flow through it; see ``reusing_names``).

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
    if cache is None:
        distinct = encode_by_length(ids[first], mask[first], encode)  # [U, D]
    else:
        distinct = _encode_cached(ids[first], mask[first], encode, cache)
    return distinct.index_select(0, inverse)  # [B, D]


def _encode_cached(
    ids: Tensor,
    mask: Tensor,
    encode: Callable[[Tensor, Tensor], Tensor],
    cache: NameCache,
) -> Tensor:
    """``encode`` of distinct rows, those in ``cache`` read from it, the rest added."""
    host_ids, host_mask = ids.cpu(), mask.cpu()  # one copy, not one a row (CUDA)
    keys = [r[m].numpy().tobytes() for r, m in zip(host_ids, host_mask, strict=True)]
    new = [i for i, key in enumerate(keys) if key not in cache]
    if new:
        rows = torch.tensor(new, device=ids.device)
        fresh = encode_by_length(ids[rows], mask[rows], encode)  # [U', D]
        for i, encoding in zip(new, fresh, strict=True):
            cache[keys[i]] = encoding
    return torch.stack([cache[key] for key in keys])  # [U, D]


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
