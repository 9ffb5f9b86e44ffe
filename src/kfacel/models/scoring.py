"""The scorer every ranker shares: mention and candidate encodings to logits [N, C].

A pair of a mention encoding ``m`` and a candidate encoding ``c`` (both width ``d``) is
described by ``[m, c, m ⊙ c, |m − c|, f, e_type(c)]``, where ``f`` are the collator's
string-similarity features and ``e_type`` an embedding of the candidate's semantic type
(a property of the concept). An MLP ``Linear → ReLU → Linear`` (``d → d → 1`` after an
input projection folded into the first layer) turns it into a score.

Optionally a type head predicts a distribution over semantic types from the mention
encoding alone, and ``log p(type of c | mention)`` is added to the score of ``c``: the
candidates' types become a latent training signal for the mention (as in LATTE, Zhu et
al. 2020, AAAI) while the mention's own annotated type is never an input.

Parameters, all covered by K-FAC: ``hidden`` and ``out`` (Linear), ``type_embedding``
(Embedding), ``type_head`` (Linear).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kfacel.positions import valid_positions


class PairScorer(nn.Module):
    """Scores every (mention, candidate) pair of a batch.

    Args:
        dim: width ``d`` of the mention and candidate encodings.
        num_features: string-similarity features per pair (0 for none).
        num_types: size of the semantic-type vocabulary, unknown type excluded
            (0 disables the type embedding and the type head).
        type_dim: width of the candidate-type embedding.
        dropout: dropout on the hidden layer.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_features: int = 0,
        num_types: int = 0,
        type_dim: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_types = num_types
        in_dim = 4 * dim + num_features + (type_dim if num_types else 0)
        self.hidden = nn.Linear(in_dim, dim)
        self.out = nn.Linear(dim, 1)
        self.dropout = nn.Dropout(dropout)
        if num_types:
            self.type_embedding = nn.Embedding(num_types + 1, type_dim)
            self.type_head = nn.Linear(dim, num_types + 1)

    def forward(
        self,
        mention: Tensor,
        candidates: Tensor,
        valid: Tensor,
        *,
        features: Tensor | None = None,
        types: Tensor | None = None,
    ) -> Tensor:
        """Logits of the candidates; invalid candidates at ``-inf``.

        Args:
            mention: ``[N, D]`` mention encodings.
            candidates: ``[N, C, D]`` candidate encodings.
            valid: ``[N, C]`` bool, False at padding candidates.
            features: ``[N, C, F]`` string-similarity features (needed when
                ``num_features > 0``).
            types: ``[N, C]`` candidate type ids, 0 unknown (needed when
                ``num_types > 0``).

        Returns:
            ``[N, C]`` logits.
        """
        m = mention[:, None, :].expand_as(candidates)  # [N, C, D]
        parts = [m, candidates, m * candidates, (m - candidates).abs()]
        if self.num_features:
            if features is None:
                raise ValueError("the scorer needs the batch's string features")
            parts.append(features.to(candidates.dtype))
        if self.num_types:
            if types is None:
                raise ValueError("the scorer needs the batch's candidate types")
            types = types.clamp(0, self.num_types)
            with valid_positions(valid):
                parts.append(self.type_embedding(types).to(candidates.dtype))
        pair = torch.cat(parts, dim=-1)  # [N, C, 4D + F + T]
        with valid_positions(valid):
            h = self.dropout(torch.relu(self.hidden(pair)))  # [N, C, D]
            scores = self.out(h).squeeze(-1)  # [N, C]
        if self.num_types:
            assert types is not None, "a scorer with types needs candidate types"
            # type_head sees one position per query: no padding to mark
            log_p = torch.log_softmax(
                self.type_head(mention).float(), dim=-1
            )  # [N, T+1]
            scores = scores + log_p.gather(1, types).to(scores.dtype)  # [N, C]
        return scores.masked_fill(~valid, float("-inf"))
