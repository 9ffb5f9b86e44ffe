"""Discriminative learning rates (LRC): each layer's rate a factor γ below the one above.

An update may train the lower layers slower than the top (``ContinualSettings.lrc``),
so that what the earlier tasks rely on moves less; it reads no old data and needs no
consolidation state.

Reference: Howard & Ruder 2018, "Universal language model fine-tuning for text
classification", ACL, §3.2.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn


def discriminative_lr_groups(
    model: nn.Module, lr: float, gamma: float
) -> list[dict[str, Any]]:
    """Parameter groups with ``η_ℓ = η_{ℓ+1} · γ`` from the top layer down (ULMFiT).

    Layers, bottom to top: parameters whose name contains ``embed``; then transformer
    blocks in index order (``layer.<i>.`` / ``layers.<i>.`` / ``blocks.<i>.``); then
    everything else (encoders of the CNN, scorer and heads) as the top layer at ``lr``.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"the LRC factor gamma must be in (0, 1], got {gamma}")
    ranked: dict[int, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            ranked.setdefault(layer_depth(name), []).append(p)
    top = max(ranked)
    order = sorted(ranked)
    return [
        {"params": ranked[d], "lr": lr * gamma ** (len(order) - 1 - i), "depth": d}
        for i, d in enumerate(order)
        if ranked[d] or d == top
    ]


BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks?)\.(\d+)\.")
TOP_DEPTH = 1_000_000
"""``layer_depth`` of everything that is neither embeddings nor a block (heads, scorer)."""


def layer_depth(name: str) -> int:
    """A parameter's layer, bottom to top: embeddings 0, block ``i`` at ``1 + i``."""
    if "embed" in name:
        return 0
    m = BLOCK.search(name)
    return 1 + int(m.group(1)) if m else TOP_DEPTH
