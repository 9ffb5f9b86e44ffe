"""consolidate's columns, and states that round-trip, load only where they cover the model.

A softmax head's ``G`` is singular by construction (its rows sum to zero), so float32
sums tip its zero eigenvalue a few rounding units either way; ``save_states`` stores
what ``load_states`` accepts, for full fine-tuning and for LoRA's ``modules_to_save``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("kfacel.hf")

from tests.hf._tiny import bert_config, pad_collator, sequence_rows, token_rows  # noqa: E402

pytestmark = pytest.mark.hf


def _token_classifier(lora: bool, layers: int = 2):
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(
        bert_config(num_hidden_layers=layers)
    )
    if not lora:
        return model
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        lora_dropout=0.0,
    )
    return peft.get_peft_model(model, config)


def _tip_below_zero(G: torch.Tensor, ulps: float) -> torch.Tensor:
    """``G`` with its null direction (the ones vector) ``ulps · n · eps · max|λ|`` below 0."""
    n = G.shape[0]
    u = torch.ones(n, 1, dtype=G.dtype) / n**0.5
    top = float(torch.linalg.eigvalsh(G.double()).abs().max())
    return G - ulps * n * torch.finfo(G.dtype).eps * top * (u @ u.T)


def _with_G(state, layer: str, G: torch.Tensor):
    """``state`` with the ``G`` factor of ``layer`` replaced."""
    factors = dict(state.curvature.factors)
    factors[layer] = replace(factors[layer], G=G)
    return replace(state, curvature=replace(state.curvature, factors=factors))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_token_classifier_state_round_trips_with_its_head_a_rounding_below_psd(
    tmp_path, lora
):
    model = _token_classifier(lora)
    state = hf.consolidate(
        model, token_rows(16, seed=0), data_collator=pad_collator, task="A"
    )
    (head,) = [n for n in state.curvature if n.endswith(("classifier", "save.default"))]
    G0 = state.curvature[head].G
    hf.save_states(tmp_path, [_with_G(state, head, _tip_below_zero(G0, 8))])
    (loaded,) = hf.load_states(tmp_path, model)
    G = loaded.curvature[head].G
    eig = torch.linalg.eigvalsh(G.double())
    assert float(eig[0]) >= -1e-5 * float(eig.abs().max())  # within float32 rounding
    torch.testing.assert_close(G, G0, atol=1e-5, rtol=1e-4)


def test_a_head_factor_far_below_psd_is_refused_on_save(tmp_path):
    model = _token_classifier(False)
    state = hf.consolidate(
        model, token_rows(8, seed=0), data_collator=pad_collator, task="A"
    )
    G = _tip_below_zero(state.curvature["classifier"].G, 1e5)
    broken = _with_G(state, "classifier", G)
    with pytest.raises(ValueError, match="factor 'kfac/classifier/G' is not positive"):
        hf.save_states(tmp_path, [broken])
    assert not (tmp_path / "consolidation").exists()


def _tensor_collator(rows):
    """Pad, then turn every column into a tensor, as ``DataCollatorWithPadding`` does."""
    batch = pad_collator(rows)
    for key in rows[0].keys() - batch.keys():
        batch[key] = torch.tensor([r[key] for r in rows])
    return batch


def test_consolidate_drops_the_columns_forward_does_not_take():
    """A raw ``text`` and an ``id`` column: dropped, as the Trainer drops them."""
    rows = [
        {**r, "text": "a raw sentence", "id": i}
        for i, r in enumerate(sequence_rows(8, seed=0))
    ]
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config())
    state = hf.consolidate(model, rows, data_collator=_tensor_collator, task="A")
    assert state.meta["task_examples"] == 8


class _KwargsOnly(nn.Module):
    """A model whose ``forward`` names no argument: it takes ``**inputs``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, **inputs):
        assert set(inputs) == {"input_ids", "attention_mask"}, set(inputs)
        return SimpleNamespace(
            logits=self.head(self.embed(inputs["input_ids"]).mean(1))
        )


def test_a_kwargs_forward_gets_every_column_but_text():
    rows = [{**r, "text": ["a", "b"]} for r in sequence_rows(8, seed=0)]
    state = hf.consolidate(
        _KwargsOnly(), rows, data_collator=_tensor_collator, task="A"
    )
    assert state.meta["task_examples"] == 8


def test_a_smaller_models_state_warns_and_strict_refuses_naming_the_layers(tmp_path):
    small = _token_classifier(False, layers=2)
    state = hf.consolidate(
        small, token_rows(8, seed=0), data_collator=pad_collator, task="A"
    )
    small.save_pretrained(tmp_path)
    hf.save_states(tmp_path, [state])
    big = _token_classifier(False, layers=3)
    with pytest.warns(UserWarning, match=r"bert\.encoder\.layer\.2\.attention"):
        hf.load_states(tmp_path, big)
    with pytest.raises(
        ValueError, match=r"covers the trainable layers bert\.encoder\.layer\.2"
    ):
        hf.load_states(tmp_path, big, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf.load_states(tmp_path, small, strict=True)  # covered: no word
    with pytest.warns(UserWarning, match="no consolidation state to penalize with"):
        assert hf.load_states(tmp_path / "elsewhere", small) == []
