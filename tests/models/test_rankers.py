"""Rankers: logits, masking, K-FAC-coverable modules, padding marks, learning."""

import dataclasses

import pytest
import torch
from torch import nn

from kfacel._checkpoint import read_tensors
from kfacel.curvature import estimate_diagonal, estimate_kfac
from kfacel.data.collate import FEATURE_NAMES, Collator, build_type_vocab
from kfacel.data.tokenize import default_encoder_path
from kfacel.linking.evaluate import evaluate
from kfacel.models import build_model
from kfacel.positions import RowLayout, matching_mask, rows_laid_out
from kfacel.training.trainer import TrainSettings, train_task
from tests._synth import TINY_BERT, synthetic_examples


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


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_a_kfacel_model_directory_as_encoder_is_refused_in_one_line(tmp_path, name):
    """Its config.json describes a ranker, not an encoder: say so and what to pass."""
    from kfacel.models.registry import save_model

    saved = save_model(tiny("cnn"), tmp_path / "model")
    key = {"cnn": "embeddings_from", "transformer": "encoder_path"}[name]
    with pytest.raises(
        ValueError, match=r"model is a kfacel model directory, not an encoder .* --init"
    ):
        build_model(name, **{key: str(saved)})


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


class OneCallEach(nn.Module):
    """The ranker made to encode mentions and names in one call each (BY_EXAMPLE)."""

    def __init__(self, ranker: nn.Module):
        super().__init__()
        self.ranker = ranker

    def forward(self, batch):
        with rows_laid_out(RowLayout.BY_EXAMPLE):
            return self.ranker(batch)


def test_kfac_of_the_transformer_chunked_by_length_equals_one_call_each(
    tokenizer, monkeypatch
):
    """K-FAC's sums over positions (K5) do not depend on how rows are grouped.

    Under ``RowLayout.OWN`` the ranker encodes mentions and names in chunks cut to
    their own longest row; the factors equal those of one padded call each (float64).
    """
    from kfacel.models import bert

    monkeypatch.setattr(bert, "MENTION_CHUNK", 3)  # 7 contexts: a last chunk of one
    monkeypatch.setattr(bert, "NAME_CHUNK", 8)
    examples = [  # contexts of 0 to 4 words, names of 1 to 5 words
        dataclasses.replace(
            ex,
            left_context=" ".join(ex.left_context.split()[:i]),
            candidates=tuple(
                dataclasses.replace(c, name=" ".join([c.name] * (1 + (i + j) % 5)))
                for j, c in enumerate(ex.candidates)
            ),
        )
        for i, ex in enumerate(synthetic_examples(7, seed=11))
    ]
    types = build_type_vocab(examples)
    batch = Collator(tokenizer, max_mention_length=32, types=types)(examples)
    model = tiny(
        "transformer", num_features=len(FEATURE_NAMES), num_types=len(types)
    ).double()
    batch = dataclasses.replace(batch, features=batch.features.double())
    widths: list[int] = []
    model.encoder.register_forward_hook(
        lambda m, args, kwargs, out: widths.append(kwargs["attention_mask"].shape[1]),
        with_kwargs=True,
    )
    chunked = estimate_kfac(model, [(batch, batch.labels)])
    assert len(widths) == 3 + 5  # 7 mentions in chunks of 3, 35 names in chunks of 8
    assert min(widths[:3]) < batch.mention_ids.shape[1]  # cut to their own longest
    assert min(widths[3:]) < batch.candidate_ids.shape[2]
    widths.clear()
    whole = estimate_kfac(OneCallEach(model), [(batch, batch.labels)])
    assert len(widths) == 2  # the mentions, the names
    assert sorted(chunked.factors) == sorted(
        name.removeprefix("ranker.") for name in whole.factors
    )
    for name, f in chunked.factors.items():
        torch.testing.assert_close(f.A, whole[f"ranker.{name}"].A)
        torch.testing.assert_close(f.G, whole[f"ranker.{name}"].G)


def test_per_example_curvature_of_the_transformer_keeps_one_call_each(rich_batch):
    """Diagonal EWC and K-FAC-reduce need the examples along the first dimension."""
    batch, num_types = rich_batch
    model = tiny("transformer", num_features=len(FEATURE_NAMES), num_types=num_types)
    calls: list[int] = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    estimate_diagonal(model, [(batch, batch.labels)])
    estimate_kfac(model, [(batch, batch.labels)], approx="reduce")
    assert len(calls) == 2 + 2
