"""Fine-tuning stability: freeze the lowest layers, re-initialize the top ones.

Tinn et al. 2023 ("Fine-tuning large neural language models for biomedical natural
language processing", Patterns; the BLURB study) found that on small biomedical datasets
fine-tuning a BERT became stable across seeds when the lowest layers were frozen, the
learning rate decayed layer-wise from the top (kfacel's LRC, ``training.lrc``) or the
top layer was re-initialized. Layers are counted as LRC counts them
(``training.lrc.layer_depth``): the embeddings first, then each transformer block.

- ``freeze_lowest(model, n)``: the ``n`` lowest layers (embeddings, then blocks 0, 1, …)
  take no gradient while a task trains; ``train_task`` restores ``requires_grad``
  afterwards, so consolidation and later tasks see the whole model.
- ``reinit_top_(model, n)``: the top ``n`` transformer blocks are drawn anew as BERT
  initializes them (Linear weights ``N(0, σ²)`` with the encoder's
  ``initializer_range`` σ, biases 0; LayerNorm weight 1, bias 0), before training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kfacel.training.lrc import BLOCK, TOP_DEPTH, layer_depth

DEFAULT_INIT_STD = 0.02
"""BERT's ``initializer_range`` where the model does not say its own."""


def layer_depths(model: nn.Module) -> list[int]:
    """The layers a model has, bottom to top (0: embeddings; 1 + i: block ``i``)."""
    depths = {layer_depth(name) for name, _ in model.named_parameters()}
    return sorted(depths - {TOP_DEPTH})  # heads and scorer: never frozen or drawn anew


@contextmanager
def freeze_lowest(model: nn.Module, n: int) -> Iterator[list[str]]:
    """Freeze the ``n`` lowest layers inside the block; the names frozen.

    Raises:
        ValueError: ``n`` is more layers than the model has below its heads.
    """
    depths = layer_depths(model)
    if n > len(depths):
        raise ValueError(
            f"freeze_layers={n}: the model has {len(depths)} layers below its heads "
            "(embeddings and transformer blocks)"
        )
    frozen_depths = set(depths[:n])
    frozen = [
        (name, p)
        for name, p in model.named_parameters()
        if p.requires_grad and layer_depth(name) in frozen_depths
    ]
    for _, p in frozen:
        p.requires_grad_(False)
    try:
        yield [name for name, _ in frozen]
    finally:
        for _, p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def reinit_top_(model: nn.Module, n: int) -> list[str]:
    """Re-initialize the top ``n`` transformer blocks in place; the modules drawn anew.

    Draws from torch's global generator (``train_task`` seeds it).

    Raises:
        ValueError: the model has fewer than ``n`` transformer blocks.
    """
    blocks = [d - 1 for d in layer_depths(model) if d >= 1]
    if n > len(blocks):
        raise ValueError(
            f"reinit_top={n}: the model has {len(blocks)} transformer blocks"
        )
    chosen = set(blocks[len(blocks) - n :])
    std = _init_std(model)
    done = []
    for name, module in model.named_modules():
        m = BLOCK.search(name + ".")
        if m is None or int(m.group(1)) not in chosen:
            continue
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            continue
        done.append(name)
    return done


def _init_std(model: nn.Module) -> float:
    """The ``initializer_range`` of the first Hugging Face config inside ``model``."""
    for module in model.modules():
        config = getattr(module, "config", None)
        std = getattr(config, "initializer_range", None)
        if isinstance(std, float):
            return std
    return DEFAULT_INIT_STD
