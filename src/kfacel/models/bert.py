"""The transformer ranker: the first k layers of a local BERT-family encoder.

One encoder (``transformers.BertModel`` without pooler) reads the mention in its context
(``[CLS] left [M] mention [/M] right [SEP]``) and, separately, every candidate name
(``[CLS] name [SEP]``). The mention is the mean of the encoder's outputs over the marked
span, a candidate the mean over its tokens (the pooling all-MiniLM-L6-v2 was trained
with); ``PairScorer`` gives the logits. Names repeated within a batch are encoded once,
except while curvature is recorded (``distinct_names.py``); K-FAC's recording still lets the
ranker chunk its sequences by length (``kfacel.positions.RowLayout.OWN``). Weights come
from a local checkpoint directory (default: the MiniLM package's), read from
``model.safetensors``; nothing is downloaded.

Parameters and K-FAC coverage: every Linear of the encoder (query, key, value, attention
output, intermediate, output) and of the scorer, and the word, position and token-type
Embeddings are covered; the encoder's LayerNorms (embeddings and two per layer) are not
covered by K-FAC (the paper leaves them out; the penalty's ``ignore``/``diagonal``
option decides).

With ``lora_rank`` r > 0 the encoder's own weights are frozen and LoRA adapters of rank r
train on every attention query and value (Hu et al. 2022, "LoRA: Low-Rank Adaptation of
Large Language Models"; peft's ``LoraConfig(r, lora_alpha=2r)``, no dropout), beside the
scorer. The adapters' ``lora_A`` and ``lora_B`` are Linear layers: K-FAC covers them and
the scorer, which are then the trainable parameters, and a later task trains the same
adapters on (KFC on the adapter, as ``kfacel.hf`` does for a Hugging Face model).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from kfacel._checkpoint import read_config, read_tensors
from kfacel.models.distinct_names import (
    NameCache,
    encode_by_length,
    encode_rows,
    should_dedup,
    should_reuse,
)
from kfacel.models.scoring import PairScorer
from kfacel.positions import (
    RowLayout,
    regrouped_rows,
    row_layout,
    valid_positions,
)
from kfacel.types import Batch

MENTION_CHUNK = 8  # contexts a call in training and evaluation (see encode_by_length)
NAME_CHUNK = 64  # names a call while K-FAC records (training: distinct_names' default)


@dataclass(frozen=True)
class BertRankerConfig:
    """Configuration of ``BertRanker``.

    Attributes:
        encoder_path: local checkpoint directory to read weights from, or None for a
            randomly initialized encoder described by ``encoder_config``.
        layers: how many of the checkpoint's first layers to keep.
        encoder_config: ``BertConfig`` as a dict (filled from the checkpoint).
        dropout: scorer dropout.
        num_features: string-similarity features per pair.
        num_types: semantic types (0: no type embedding or type head).
        start_id: id of the mention-start marker token.
        end_id: id of the mention-end marker token.
        lora_rank: rank of LoRA adapters on the attention queries and values, the
            encoder's own weights frozen (0: every weight trains).
    """

    encoder_path: str | None = None
    layers: int = 3
    encoder_config: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.1
    num_features: int = 0
    num_types: int = 0
    start_id: int = 1
    end_id: int = 2
    lora_rank: int = 0


class BertRanker(nn.Module):
    """Transformer candidate ranker; ``forward(batch) -> logits [N, C]``.

    K-FAC covers ``encoder.embeddings.{word,position,token_type}_embeddings``
    (Embedding), every ``encoder.encoder.layer.*`` Linear and ``scorer.*``; the
    ``encoder.*LayerNorm*`` weights and biases are left to the penalty's fallback.

    Args:
        config: the configuration, ``encoder_config`` filled.
        pretrained: load the checkpoint weights of ``config.encoder_path``.
    """

    cpu_bfloat16 = True  # precision ``auto``: bfloat16 on a CPU with bfloat16 units

    def __init__(self, config: BertRankerConfig, *, pretrained: bool = True) -> None:
        super().__init__()
        if not config.encoder_config:
            raise ValueError("encoder_config is empty; build with BertRanker.create")
        self.config = config
        enc_cfg = BertConfig(**config.encoder_config)
        enc_cfg.num_hidden_layers = config.layers
        self.encoder = BertModel(enc_cfg, add_pooling_layer=False)
        self.name_cache: NameCache | None = None  # see distinct_names.reusing_names
        self.scorer = PairScorer(
            enc_cfg.hidden_size,
            num_features=config.num_features,
            num_types=config.num_types,
            dropout=config.dropout,
        )
        if pretrained and config.encoder_path:
            names = list(self.encoder.state_dict())
            found = read_tensors(config.encoder_path, names)
            missing = [n for n in names if n not in found and "position_ids" not in n]
            if missing:
                raise ValueError(
                    f"{config.encoder_path}: checkpoint lacks {missing[:5]} "
                    f"({len(missing)} missing)"
                )
            self.encoder.load_state_dict(found, strict=False)
        if config.lora_rank < 0:
            raise ValueError(f"lora_rank must be 0 or more, got {config.lora_rank}")
        if config.lora_rank:
            # peft's wrapper forwards BertModel's attributes and call
            self.encoder = cast(BertModel, _with_lora(self.encoder, config.lora_rank))

    @classmethod
    def create(cls, config: BertRankerConfig) -> BertRanker:
        """A ranker with ``encoder_config`` read from ``encoder_path`` when empty."""
        if not config.encoder_config:
            if not config.encoder_path:
                raise ValueError("give encoder_path or encoder_config")
            raw = read_config(config.encoder_path)
            if config.layers > raw.get("num_hidden_layers", config.layers):
                raise ValueError(
                    f"{config.encoder_path} has {raw['num_hidden_layers']} layers, "
                    f"asked for {config.layers}"
                )
            keep = BertConfig().to_dict().keys()
            enc = {k: v for k, v in raw.items() if k in keep and not k.startswith("_")}
            enc.pop("architectures", None)
            enc.pop("transformers_version", None)
            enc["num_hidden_layers"] = config.layers
            config = replace(config, encoder_config=enc)
        return cls(config)

    def forward(self, batch: Batch) -> Tensor:
        """Logits ``[N, C]`` of the batch's candidates, invalid ones at ``-inf``."""
        n, c, lc = batch.candidate_ids.shape
        ids, mask = batch.mention_ids, batch.mention_mask
        names_mask = batch.candidate_mask.reshape(n * c, lc)
        names_ids = batch.candidate_ids.reshape(n * c, lc)
        layout = row_layout()
        if layout is RowLayout.FREE and should_dedup(self):  # each name once
            table = TokenTable.of(
                self.encoder.embeddings.word_embeddings, ids, names_ids
            )
            mention = encode_by_length(
                ids, mask, lambda i, m: self._encode_mention(i, m, table), MENTION_CHUNK
            )
            names = encode_rows(
                names_ids,
                names_mask,
                lambda i, m: self._encode_name(i, m, table),
                should_reuse(self),
            )  # [N*C, D]
        elif layout is RowLayout.OWN:  # K-FAC: every row its own, chunks by length
            with regrouped_rows():
                mention = encode_by_length(
                    ids, mask, self._encode_mention, MENTION_CHUNK
                )
                names = encode_by_length(
                    names_ids, names_mask, self._encode_name, NAME_CHUNK
                )
        else:  # one call each: whole examples along the first dimension
            mention = self._encode_mention(ids, mask)  # [N, D]
            names = self._encode_name(names_ids, names_mask)  # [N*C, D]
        cands = names.reshape(n, c, -1)  # [N, C, D]
        return self.scorer(
            mention,
            cands,
            batch.candidate_valid,
            features=batch.features,
            types=batch.candidate_types,
        )

    def _encode_mention(
        self, ids: Tensor, mask: Tensor, table: TokenTable | None = None
    ) -> Tensor:
        """Mention encodings ``[B, D]``: the mean over the marked span in context."""
        span = _mention_span(ids, self.config.start_id, self.config.end_id) & mask
        return _masked_mean(self._encode(ids, mask, table), span)

    def _encode_name(
        self, ids: Tensor, mask: Tensor, table: TokenTable | None = None
    ) -> Tensor:
        """Mean-pooled name encodings ``[B, D]``."""
        return _masked_mean(self._encode(ids, mask, table), mask)

    def _encode(
        self, ids: Tensor, mask: Tensor, table: TokenTable | None = None
    ) -> Tensor:
        """Last hidden states ``[B, S, D]``; word embeddings from ``table`` if given."""
        # one row of position ids per sequence (a view): the names of N queries are
        # N·C rows, which a batch-shared [1, S] row could not tell apart from N
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        words: dict[str, Tensor] = (
            {"input_ids": ids} if table is None else {"inputs_embeds": table(ids)}
        )
        with valid_positions(mask):  # every Linear and Embedding here sees [B, S]
            out = self.encoder(
                **words, attention_mask=mask.long(), position_ids=positions
            )
        return out.last_hidden_state  # [B, S, D]


@dataclass(frozen=True)
class TokenTable:
    """The word embeddings of one forward's token ids, looked up in one call.

    A chunked forward calls the encoder once per chunk (``encode_by_length``); were
    each call to look its tokens up itself, the backward of every call would write a
    dense gradient of the whole vocabulary (30,522 × 384 for MiniLM) and add it to the
    others: 16 such writes in a training step of 16 queries, a fifth of the step
    (benchmarks/archive/journal.md, "bfloat16 autocast and one word lookup a step").
    Here the distinct ids are looked up once, and each chunk gathers its rows from them
    (``index_select``: a deterministic backward into the small table); values and
    gradients are those of per-call lookups.
    """

    ids: Tensor  # [V] sorted distinct token ids
    rows: Tensor  # [V, D] their embeddings

    @classmethod
    def of(cls, embedding: nn.Embedding, *ids: Tensor) -> TokenTable:
        """The table of every id in ``ids`` (any shapes)."""
        distinct = torch.unique(torch.cat([t.reshape(-1) for t in ids]))  # sorted
        return cls(distinct, embedding(distinct))

    def __call__(self, ids: Tensor) -> Tensor:
        """Embeddings ``[*ids.shape, D]``, as ``embedding(ids)`` would give them."""
        where = torch.searchsorted(self.ids, ids.reshape(-1))
        return self.rows.index_select(0, where).reshape(*ids.shape, -1)


def _with_lora(encoder: BertModel, rank: int) -> nn.Module:
    """``encoder`` with LoRA adapters of ``rank`` on queries and values, itself frozen."""
    try:
        import peft
    except ImportError:
        raise ImportError("lora_rank needs peft: pip install 'kfacel[hf]'") from None

    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], lora_dropout=0.0
    )
    return peft.get_peft_model(encoder, config)


def _mention_span(ids: Tensor, start_id: int, end_id: int) -> Tensor:
    """True from the start marker up to and including the end marker."""
    opened = (ids == start_id).cumsum(dim=1)
    closed = (ids == end_id).cumsum(dim=1) - (ids == end_id).long()
    return (opened - closed) > 0


def _masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over positions where ``mask`` is True: ``[B, S, D]`` -> ``[B, D]``."""
    w = mask.to(h.dtype)[..., None]  # [B, S, 1]
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
