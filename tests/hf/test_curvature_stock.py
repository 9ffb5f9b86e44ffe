"""Stock BertForTokenClassification: K-FAC and the diagonal against per-token enumeration.

The estimators pass the mapping as keyword arguments, read ``.logits`` [N, S, C], skip
-100 labels and padding (K9, K5); the oracle runs each example alone.
"""

from __future__ import annotations

import pytest
import torch

from kfacel.curvature import estimate_diagonal, estimate_kfac
from tests._synth import select_rows
from tests.hf._tiny import bert_config, pad_collator, token_rows
from tests.oracles import TOL64, fisher_diagonal, kfac_factors, per_example_grads

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf

LAYERS = [
    "bert.embeddings.word_embeddings",
    "bert.embeddings.position_embeddings",
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.1.output.dense",
    "classifier",
]


def _model_and_batch():
    torch.manual_seed(0)
    config = bert_config(num_hidden_layers=1, hidden_size=8, intermediate_size=16)
    model = transformers.BertForTokenClassification(config).double()
    batch = pad_collator(token_rows(3, seed=1))
    labels = batch.pop("labels")
    return model, batch, labels


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_token_classifier_factors_equal_the_per_token_oracle(kind: str) -> None:
    model, batch, y = _model_and_batch()
    names = [n for n in LAYERS if "layer.1" not in n]
    fisher = estimate_kfac(model, [(batch, y)], kind=kind)
    ref = kfac_factors(model, batch, y, names, kind=kind, select=select_rows)
    for name, (A, G) in ref.items():
        torch.testing.assert_close(fisher[name].A, A, **TOL64, msg=f"{name}.A")
        torch.testing.assert_close(fisher[name].G, G, **TOL64, msg=f"{name}.G")


def test_token_classifier_diagonal_equals_the_per_token_oracle() -> None:
    model, batch, y = _model_and_batch()
    diag = estimate_diagonal(model, [(batch, y)])
    ref = fisher_diagonal(
        per_example_grads(model, batch, y, kind="empirical", select=select_rows)
    )
    for k in ref:
        torch.testing.assert_close(diag[k], ref[k], **TOL64, msg=k)


def test_a_tied_mlm_decoder_is_refused_and_an_untied_one_is_covered() -> None:
    torch.manual_seed(0)
    rows = token_rows(2, seed=2)
    batch = pad_collator(rows)
    labels = batch.pop("labels")
    tied = transformers.BertForMaskedLM(bert_config(num_hidden_layers=1))
    with pytest.raises(ValueError, match=r"word_embeddings\.weight"):
        estimate_kfac(tied, [(batch, labels)])
    untied = transformers.BertForMaskedLM(
        bert_config(num_hidden_layers=1, tie_word_embeddings=False)
    )
    head = untied.cls.predictions
    if head.bias is not head.decoder.bias:  # transformers 5: an unused copy when untied
        head.bias.requires_grad_(False)
    fisher = estimate_kfac(untied, [(batch, labels)], uncovered="diagonal")
    assert "cls.predictions.decoder" in fisher
    assert all("LayerNorm" in u for u in fisher.uncovered)
