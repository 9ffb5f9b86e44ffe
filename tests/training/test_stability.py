"""Freezing the lowest layers and re-initializing the top ones (training.stability)."""

import pytest
import torch
from _training_synth import batches, tiny_cnn
from tests._synth import TINY_BERT, synthetic_examples

from kfacel.data.collate import Collator, make_batches
from kfacel.data.tokenize import WordPieceTokenizer
from kfacel.models import build_model
from kfacel.training.stability import freeze_lowest, layer_depths, reinit_top_
from kfacel.training.trainer import TrainSettings, train_task


def tiny_transformer(layers: int = 2):
    torch.manual_seed(0)
    return build_model("transformer", encoder_config=TINY_BERT, layers=layers)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


@pytest.fixture(scope="module")
def transformer_batches():
    collator = Collator(WordPieceTokenizer(), max_mention_length=16)
    return make_batches(synthetic_examples(16, seed=0), collator, batch_size=8)


def test_a_transformer_has_embeddings_then_one_layer_per_block():
    assert layer_depths(tiny_transformer(layers=2)) == [0, 1, 2]
    assert layer_depths(tiny_cnn()) == [0]  # the CNN: its embeddings only


def test_frozen_layers_do_not_move_and_are_trainable_again_after(transformer_batches):
    model = tiny_transformer()
    before = _state(model)
    s = TrainSettings(epochs=1, lr=1e-2, freeze_layers=2)
    train_task(model, transformer_batches, s)
    changed = _changed(before, model)
    moved_embeddings = {k for k in changed if "embed" in k}
    moved_block0 = {k for k in changed if ".layer.0." in k}
    assert not moved_embeddings
    assert not moved_block0
    assert any(".layer.1." in k for k in changed)  # the block above them trains
    assert all(p.requires_grad for p in model.parameters())


def test_a_penalty_gradient_does_not_move_a_frozen_layer(transformer_batches):
    class PullAway:  # a penalty whose gradient is non-zero on every weight
        def add_grad_(self, model):
            for p in model.parameters():
                p.grad = torch.ones_like(p) if p.grad is None else p.grad + 1
            return torch.zeros(())

    model = tiny_transformer()
    before = _state(model)
    s = TrainSettings(epochs=1, lr=1e-2, freeze_layers=1)
    train_task(model, transformer_batches, s, penalty=PullAway())
    assert not {k for k in _changed(before, model) if "embed" in k}


def test_reinit_draws_the_top_block_anew_as_bert_initializes_it():
    model = tiny_transformer()
    before = _state(model)
    names = reinit_top_(model, 1)
    assert names
    assert all(".layer.1." in n for n in names)
    changed = _changed(before, model)
    assert changed
    assert all(".layer.1." in k for k in changed)
    for name, module in model.named_modules():
        if name in names and isinstance(module, torch.nn.Linear):
            std = TINY_BERT.get("initializer_range", 0.02)
            assert module.weight.std().item() == pytest.approx(std, rel=0.5)
            assert torch.count_nonzero(module.bias) == 0
        if name in names and isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))


def test_reinit_in_training_is_seeded(transformer_batches):
    runs = []
    for _ in range(2):
        model = tiny_transformer()
        train_task(model, transformer_batches, TrainSettings(epochs=1, reinit_top=1))
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: reinit_top_(m, 3), "reinit_top=3: the model has 2 transformer"),
        (lambda m: freeze_lowest(m, 4).__enter__(), "freeze_layers=4: the model has 3"),
    ],
)
def test_more_layers_than_the_model_has_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_transformer())


def test_the_cnn_has_no_block_to_reinitialize():
    with pytest.raises(ValueError, match="0 transformer blocks"):
        train_task(tiny_cnn(), batches(8, 0, 8), TrainSettings(reinit_top=1))
