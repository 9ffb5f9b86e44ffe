"""Rankers: logits, masking, K-FAC-coverable modules, padding marks, learning."""

import dataclasses

import pytest
import torch
from tests._synth import TINY_BERT, synthetic_examples
from torch import nn

from kfacel._checkpoint import read_tensors
from kfacel.curvature import estimate_diagonal, estimate_kfac
from kfacel.data.collate import FEATURE_NAMES, Collator, build_type_vocab
from kfacel.data.tokenize import default_encoder_path
from kfacel.models import build_model
from kfacel.positions import matching_mask
from kfacel.training.evaluate import evaluate
from kfacel.training.trainer import TrainSettings, train_task


def tiny(name: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    if name == "cnn":
        return build_model("cnn", embed_dim=16, hidden=32, **extra)
    return build_model("transformer", encoder_config=TINY_BERT, layers=2, **extra)


@pytest.fixture(scope="module")
def rich_batch(tokenizer):
    examples = synthetic_examples(6, seed=3)
    # drop candidates of two queries so the batch has padding candidates
    examples[1] = dataclasses.replace(
        examples[1], candidates=examples[1].candidates[:3]
    )
    examples[1] = dataclasses.replace(examples[1], gold=examples[1].candidates[0].id)
    types = build_type_vocab(examples)
    return Collator(tokenizer, max_mention_length=16, types=types)(examples), len(types)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_logits_shape_and_padding_candidates_at_minus_inf(name, rich_batch):
    batch, num_types = rich_batch
    model = tiny(name, num_features=len(FEATURE_NAMES), num_types=num_types).eval()
    logits = model(batch)
    assert logits.shape == batch.candidate_valid.shape
    assert torch.isneginf(logits[~batch.candidate_valid]).all()
    assert torch.isfinite(logits[batch.candidate_valid]).all()


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_permuting_candidates_permutes_logits(name, rich_batch):
    batch, num_types = rich_batch
    model = tiny(name, num_features=len(FEATURE_NAMES), num_types=num_types).eval()
    perm = torch.tensor([4, 2, 0, 3, 1])
    permuted = dataclasses.replace(
        batch,
        candidate_ids=batch.candidate_ids[:, perm],
        candidate_mask=batch.candidate_mask[:, perm],
        candidate_valid=batch.candidate_valid[:, perm],
        features=batch.features[:, perm],
        candidate_types=batch.candidate_types[:, perm],
    )
    torch.testing.assert_close(model(permuted), model(batch)[:, perm])


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_only_kfac_coverable_modules_hold_parameters(name):
    model = tiny(name, num_features=3, num_types=2)
    allowed = (nn.Linear, nn.Conv1d, nn.Embedding, nn.LayerNorm)
    for mod_name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own:
            assert isinstance(module, allowed), mod_name
        if isinstance(module, nn.Conv1d):
            assert module.groups == 1
            assert module.dilation == (1,)
            assert module.padding_mode == "zeros"


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_every_sequence_layer_call_has_its_padding_marked(name, rich_batch):
    batch, num_types = rich_batch
    model = tiny(name, num_features=len(FEATURE_NAMES), num_types=num_types).eval()
    unmarked: list[str] = []

    def hook(mod_name):
        def record(module, inputs, output):
            x = inputs[0]
            if isinstance(module, nn.Embedding):
                positions = tuple(x.shape)
            elif isinstance(module, nn.Conv1d):
                positions = (x.shape[0], output.shape[-1])
            else:
                positions = tuple(x.shape[:-1])
            if len(positions) > 1 and matching_mask(positions) is None:
                unmarked.append(f"{mod_name} {positions}")

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Embedding)
    ]
    try:
        model(batch)
    finally:
        for h in handles:
            h.remove()
    assert unmarked == []  # position ids too: one row per sequence


def test_cnn_copies_the_minilm_word_embeddings():
    path = default_encoder_path()
    expected = read_tensors(path, ["embeddings.word_embeddings.weight"])
    expected = expected["embeddings.word_embeddings.weight"]
    model = build_model("cnn", embeddings_from=str(path), hidden=8)
    torch.testing.assert_close(model.word_vectors, expected)
    assert "word_vectors" not in dict(model.named_parameters())
    assert model.embed_proj.in_features == 384
    model = build_model(
        "cnn", embeddings_from=str(path), hidden=8, freeze_embeddings=False
    )
    torch.testing.assert_close(model.embedding.weight.detach(), expected)
    assert model.config.embed_dim == 384


def test_transformer_keeps_the_first_layers_of_minilm():
    path = default_encoder_path()
    model = build_model("transformer", encoder_path=str(path), layers=1)
    assert len(model.encoder.encoder.layer) == 1
    name = "encoder.layer.0.attention.self.query.weight"
    expected = read_tensors(path, [name])[name]
    torch.testing.assert_close(model.encoder.state_dict()[name], expected)


def test_unknown_model_or_setting_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("rnn")
    with pytest.raises(ValueError, match="unknown cnn settings"):
        build_model("cnn", hiden=3)


@pytest.mark.parametrize(("name", "lr"), [("cnn", 3e-3), ("transformer", 1e-3)])
def test_tiny_random_ranker_learns_a_synthetic_task(
    name, lr, synthetic_batches, one_thread
):
    train, dev = synthetic_batches
    model = tiny(name, dropout=0.0)
    before = evaluate(model, dev).accuracy
    log = train_task(
        model, train, TrainSettings(epochs=5, lr=lr, seed=0), dev_batches=dev
    )
    after = evaluate(model, dev).accuracy
    assert after == pytest.approx(log.best_dev_accuracy)
    assert after > 0.6 > before + 0.2  # chance is 0.2 with 5 candidates


def test_curvature_of_the_transformer_takes_position_ids_as_every_querys(rich_batch):
    """The position table's A is each position's real-token frequency (K5, K6).

    Over mentions and names (N·C rows); the diagonal Fisher works too.
    """
    batch, num_types = rich_batch
    model = tiny("transformer", num_features=len(FEATURE_NAMES), num_types=num_types)
    fisher = estimate_kfac(model, [(batch, batch.labels)])
    table = "encoder.embeddings.position_embeddings"
    names = batch.candidate_mask.reshape(-1, batch.candidate_mask.shape[-1])
    counts = torch.zeros(TINY_BERT["max_position_embeddings"])
    for mask in (batch.mention_mask, names):
        counts[: mask.shape[1]] += mask.sum(0).float()  # real uses of each position
    torch.testing.assert_close(fisher[table].A, counts / counts.sum())
    diag = estimate_diagonal(model, [(batch, batch.labels)])
    used = diag[f"{table}.weight"].abs().sum(1) > 0
    assert used.tolist() == (counts > 0).tolist()
