"""The CNN ranker: word-piece embeddings, Conv1d encoders, max-pooling, pair scorer.

The mention in its context (mention marked by two marker tokens) and each candidate name
are embedded with one shared embedding table, initialized from the word embeddings of a
local BERT-family checkpoint (the MiniLM package's by default) when one is given. One
Conv1d encodes the context and another the names; the context encoding is max-pooled
twice, over the whole sequence and over the marked mention span, and projected; the name
encoding is max-pooled. ``PairScorer`` turns the pair into a logit. Names repeated
within a batch are encoded once, except while curvature is recorded (``distinct_names.py``).

With ``freeze_embeddings`` (the default when copying) the copied table is a fixed buffer
and a Linear ``embed_proj`` maps it to ``embed_dim``.

Parameters and K-FAC coverage: ``embedding`` (Embedding) or ``embed_proj`` (Linear),
``mention_conv`` and
``name_conv`` (Conv1d, zero 'same' padding), ``mention_proj`` (Linear) and the scorer's
layers (Linear, Embedding) are all covered; there is no LayerNorm and no bare parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kfacel._checkpoint import read_config, read_tensors
from kfacel.models.distinct_names import (
    NameCache,
    encode_rows,
    should_dedup,
    should_reuse,
)
from kfacel.models.scoring import PairScorer
from kfacel.positions import valid_positions
from kfacel.types import Batch


@dataclass(frozen=True)
class CNNConfig:
    """Configuration of ``CNNRanker``.

    Attributes:
        vocab_size: token vocabulary size (taken from ``embeddings_from`` when set).
        embed_dim: token embedding width (taken from ``embeddings_from`` when set).
        hidden: Conv1d channels and encoding width ``d``.
        kernel: Conv1d kernel width (odd).
        dropout: dropout on embeddings and scorer.
        num_features: string-similarity features per pair.
        num_types: semantic types (0: no type embedding or type head).
        start_id: id of the mention-start marker token.
        end_id: id of the mention-end marker token.
        embeddings_from: checkpoint directory to copy word embeddings from, or None.
        freeze_embeddings: keep copied embeddings fixed (a buffer, not a parameter)
            and learn a Linear projection of them to ``embed_dim`` instead: much
            faster on CPU than updating a 30k-row table every step.
        pretrained_dim: width of the copied embeddings (set by ``create``).
    """

    vocab_size: int = 30522
    embed_dim: int = 128
    hidden: int = 256
    kernel: int = 3
    dropout: float = 0.1
    num_features: int = 0
    num_types: int = 0
    start_id: int = 1
    end_id: int = 2
    embeddings_from: str | None = None
    freeze_embeddings: bool = True
    pretrained_dim: int = 0


class CNNRanker(nn.Module):
    """Convolutional candidate ranker; ``forward(batch) -> logits [N, C]``.

    K-FAC covers every parameter: ``embedding.weight`` (Embedding) or, with frozen
    pretrained vectors (buffer ``word_vectors``, not trained) ``embed_proj.*``,
    ``mention_conv.*``, ``name_conv.*`` (Conv1d), ``mention_proj.*`` (Linear),
    ``scorer.hidden.*``, ``scorer.out.*``, ``scorer.type_head.*`` (Linear),
    ``scorer.type_embedding.weight`` (Embedding).

    Args:
        config: the configuration.
        pretrained: copy the word embeddings of ``config.embeddings_from`` (False when
            the weights are about to be loaded from a model directory).
    """

    def __init__(self, config: CNNConfig, *, pretrained: bool = True) -> None:
        super().__init__()
        if config.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {config.kernel}")
        self.config = config
        c = config
        self.frozen = bool(c.embeddings_from and c.freeze_embeddings)
        if self.frozen:
            table = torch.zeros(c.vocab_size, c.pretrained_dim)
            self.register_buffer("word_vectors", table)
            self.embed_proj = nn.Linear(c.pretrained_dim, c.embed_dim)
        else:
            self.embedding = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        pad = c.kernel // 2
        self.mention_conv = nn.Conv1d(c.embed_dim, c.hidden, c.kernel, padding=pad)
        self.name_conv = nn.Conv1d(c.embed_dim, c.hidden, c.kernel, padding=pad)
        self.mention_proj = nn.Linear(2 * c.hidden, c.hidden)
        self.dropout = nn.Dropout(c.dropout)
        self.name_cache: NameCache | None = None  # see distinct_names.reusing_names
        self.scorer = PairScorer(
            c.hidden,
            num_features=c.num_features,
            num_types=c.num_types,
            dropout=c.dropout,
        )
        if pretrained and c.embeddings_from:
            weight = read_tensors(
                c.embeddings_from, ["embeddings.word_embeddings.weight"]
            )
            target = cast(
                Tensor, self.word_vectors if self.frozen else self.embedding.weight
            )
            if weight:
                with torch.no_grad():
                    target.copy_(weight["embeddings.word_embeddings.weight"])

    @classmethod
    def create(cls, config: CNNConfig) -> CNNRanker:
        """A fresh ranker; vocabulary and width follow ``embeddings_from`` if set."""
        if config.embeddings_from:
            enc = read_config(config.embeddings_from)
            dims = {
                "vocab_size": enc["vocab_size"],
                "pretrained_dim": enc["hidden_size"],
            }
            if not config.freeze_embeddings:
                dims["embed_dim"] = enc["hidden_size"]
            config = CNNConfig(**{**config.__dict__, **dims})
        return cls(config)

    def forward(self, batch: Batch) -> Tensor:
        """Logits ``[N, C]`` of the batch's candidates, invalid ones at ``-inf``."""
        n, c, lc = batch.candidate_ids.shape
        ids, mask = batch.mention_ids, batch.mention_mask
        span = _mention_span(ids, self.config.start_id, self.config.end_id) & mask
        context = self._encode(ids, mask, self.mention_conv)  # [N, L, H]
        pooled = torch.cat(
            [_masked_max(context, mask), _masked_max(context, span)], dim=-1
        )  # [N, 2H]
        mention = torch.tanh(self.mention_proj(pooled))  # [N, H]
        names_ids = batch.candidate_ids.reshape(n * c, lc)
        names_mask = batch.candidate_mask.reshape(n * c, lc)
        if should_dedup(self):
            names = encode_rows(
                names_ids, names_mask, self._encode_name, should_reuse(self)
            )  # [N*C, H]
        else:
            names = self._encode_name(names_ids, names_mask)  # [N*C, H]
        cands = names.reshape(n, c, -1)  # [N, C, H]
        return self.scorer(
            mention,
            cands,
            batch.candidate_valid,
            features=batch.features,
            types=batch.candidate_types,
        )

    def _encode_name(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Max-pooled name encodings ``[B, H]``."""
        return _masked_max(self._encode(ids, mask, self.name_conv), mask)

    def _encode(self, ids: Tensor, mask: Tensor, conv: nn.Conv1d) -> Tensor:
        with valid_positions(mask):  # Embedding on [B, S], Conv1d output length S
            if self.frozen:
                vectors = cast(Tensor, self.word_vectors)  # a buffer
                x = self.embed_proj(F.embedding(ids, vectors))  # [B, S, E]
            else:
                x = self.embedding(ids)  # [B, S, E]
            x = self.dropout(x)
            x = x * mask[..., None].to(x.dtype)  # zero padding, as conv padding is
            h = torch.relu(conv(x.transpose(1, 2)))  # [B, H, S]
        return h.transpose(1, 2)  # [B, S, H]


def _mention_span(ids: Tensor, start_id: int, end_id: int) -> Tensor:
    """True from the start marker up to (not including) the end marker."""
    opened = (ids == start_id).cumsum(dim=1)
    closed = (ids == end_id).cumsum(dim=1)
    return (opened - closed) > 0


def _masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Max over positions where ``mask`` is True: ``[B, S, H]`` -> ``[B, H]``."""
    filled = h.masked_fill(~mask[..., None], float("-inf"))
    out = filled.max(dim=1).values
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))
