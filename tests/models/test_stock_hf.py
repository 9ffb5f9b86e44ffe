"""Stock Hugging Face classifier: HF's own [1, S] position ids against [N, S] by hand.

K-FAC and the diagonal Fisher must be the same either way (K5).
"""

from contextlib import nullcontext

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from kfacel.curvature import estimate_diagonal, estimate_kfac
from kfacel.positions import valid_positions
from tests.oracles import TOL64


class Classifier(nn.Module):
    """``BertForSequenceClassification`` as users have it; ``expand`` passes [N, S] ids."""

    def __init__(self, expand: bool, masked: bool) -> None:
        super().__init__()
        self.expand, self.masked = expand, masked
        config = BertConfig(
            vocab_size=20,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=8,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        torch.manual_seed(0)
        self.bert = BertForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        ids, mask = input_ids, attention_mask
        extra = {}
        if self.expand:
            extra["position_ids"] = torch.arange(ids.shape[1]).expand_as(ids)
        marks = valid_positions(mask.bool()) if self.masked else nullcontext()
        with marks:
            return self.bert(input_ids=ids, attention_mask=mask, **extra).logits


@pytest.mark.parametrize("masked", [False, True], ids=["stock", "padding-marked"])
def test_hf_position_ids_are_every_examples(masked: bool) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20, (4, 6), generator=g)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = 0
    inputs, y = {"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 1, 2, 0])
    stock = Classifier(expand=False, masked=masked).double()
    by_hand = Classifier(expand=True, masked=masked).double()
    for estimate in (estimate_kfac, estimate_diagonal):
        got = estimate(stock, [(inputs, y)])
        want = estimate(by_hand, [(inputs, y)])
        assert set(got) == set(want)
        for name in want:
            w, g_ = want[name], got[name]
            if estimate is estimate_kfac:
                torch.testing.assert_close(g_.A, w.A, **TOL64, msg=name)
                w, g_ = w.G, g_.G
            torch.testing.assert_close(g_, w, **TOL64, msg=name)
    positions = estimate_kfac(stock, [(inputs, y)])[
        "bert.bert.embeddings.position_embeddings"
    ]
    real = mask.bool().sum(0)  # the attention_mask marks padding even when unmarked
    counts = torch.zeros(8, dtype=torch.float64)
    counts[:6] = real.double()
    torch.testing.assert_close(positions.A, counts / counts.sum(), **TOL64)
