"""Repeated names encoded once: same logits and gradients as encoding every row."""

import pytest
import torch

from kfacel.data.collate import FEATURE_NAMES, Collator
from kfacel.models import build_model
from tests._synth import TINY_BERT, synthetic_examples


def no_dropout(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = {"num_features": len(FEATURE_NAMES), "dropout": 0.0}
    if name == "cnn":
        return build_model("cnn", embed_dim=16, hidden=32, **common).double()
    config = {
        **TINY_BERT,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    return build_model(
        "transformer", encoder_config=config, layers=2, **common
    ).double()


def logits_and_grads(model, batch):
    logits = model(batch)
    loss = torch.nn.functional.cross_entropy(logits, batch.labels)
    params = [p for p in model.parameters() if p.requires_grad]
    return logits.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def assert_same_grads(grads, expected):
    """Equal gradients, parameter by parameter; None (unused) on both sides alike."""
    for a, b in zip(grads, expected, strict=True):
        if a is None or b is None:
            assert (a, b) == (None, None)
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_dedup_gives_the_same_values_and_gradients(name, tokenizer, one_thread):
    examples = synthetic_examples(4, seed=5)
    batch = Collator(tokenizer, max_mention_length=16)(examples + examples)
    model = no_dropout(name)
    rows = []
    encode = model._encode_name
    model._encode_name = lambda ids, mask, *table: (
        rows.append(len(ids)),
        encode(ids, mask, *table),
    )[1]

    model.eval()  # gradients in eval mode: the curvature setting, every row encoded
    full, full_grads = logits_and_grads(model, batch)
    model.train()  # training mode: each distinct name once
    dedup, dedup_grads = logits_and_grads(model, batch)
    with torch.no_grad():
        model.eval()
        evaluated = model(batch)

    n_names = batch.candidate_valid.numel()
    assert rows[0] == n_names
    assert rows[1] == rows[2] <= n_names // 2
    torch.testing.assert_close(dedup, full)
    torch.testing.assert_close(evaluated, full)
    assert_same_grads(dedup_grads, full_grads)


def test_the_copy_back_gradient_is_bitwise_repeatable_with_two_threads():
    # many duplicates of few rows: the backward sums many gradients into each row,
    # which advanced indexing's backward (index_put_ with accumulate) does in a
    # thread-dependent order on the CPU; seeded training must not depend on it
    from kfacel.models.distinct_names import encode_rows

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(1, 40, (20000, 1), generator=gen)
        weight = torch.randn(40, 64, dtype=torch.float32, generator=gen)
        upstream = torch.randn(20000, 64, generator=gen)
        grads = []
        for _ in range(5):
            w = weight.clone().requires_grad_(True)
            out = encode_rows(ids, ids > 0, lambda i, m, w=w: w[i[:, 0]] * 1.0)
            (g,) = torch.autograd.grad((out * upstream).sum(), w)
            grads.append(g)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_encoding_names_by_length_in_chunks_equals_one_padded_call(tokenizer):
    from dataclasses import replace

    from kfacel.data.records import Candidate
    from kfacel.models.distinct_names import encode_by_length

    words = ["heart", "lung", "acute", "failure", "renal", "chronic", "pain"]
    examples = [  # candidate names of 1 to 4 words
        replace(
            ex,
            candidates=tuple(
                Candidate(
                    c.id, " ".join(words[(j + k) % 7] for k in range(1 + (i + j) % 4))
                )
                for j, c in enumerate(ex.candidates)
            ),
        )
        for i, ex in enumerate(synthetic_examples(6, seed=3))
    ]
    batch = Collator(tokenizer, max_mention_length=16)(examples)
    ids = batch.candidate_ids.reshape(-1, batch.candidate_ids.shape[-1])
    mask = batch.candidate_mask.reshape(ids.shape)
    assert len(set(mask.sum(1).tolist())) > 1  # names of several lengths
    model = no_dropout("transformer")
    params = [p for p in model.parameters() if p.requires_grad]
    whole = model._encode_name(ids, mask)
    widths = []

    def encode(i, m):
        widths.append(i.shape[1])
        return model._encode_name(i, m)

    chunked = encode_by_length(ids, mask, encode, chunk=4)
    assert len(widths) > 1  # several chunks, the shortest cut to less than the whole
    assert min(widths) < ids.shape[1]
    torch.testing.assert_close(chunked, whole)
    weights = torch.randn_like(whole)
    assert_same_grads(
        torch.autograd.grad((chunked * weights).sum(), params, allow_unused=True),
        torch.autograd.grad((whole * weights).sum(), params, allow_unused=True),
    )


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_evaluation_encodes_each_name_once_across_batches(name, tokenizer, one_thread):
    from kfacel.models.distinct_names import reusing_names

    examples = synthetic_examples(4, seed=5)
    collate = Collator(tokenizer, max_mention_length=16)
    first, second = collate(examples[:2]), collate(examples)  # second repeats names
    model = no_dropout(name).eval()
    rows = []
    encode = model._encode_name
    model._encode_name = lambda ids, mask, *table: (
        rows.append(len(ids)),
        encode(ids, mask, *table),
    )[1]
    with torch.no_grad():
        alone = [model(first), model(second)]
        rows.clear()
        with reusing_names(model):
            reused = [model(first), model(second)]
            model.train()  # training mode never reads the cache
            trained = model(first)
            model.eval()
    assert model.name_cache is None  # dropped on exit
    first_names = torch.unique(first.candidate_ids.flatten(0, 1), dim=0).shape[0]
    assert rows[0] == first_names
    assert rows[1] < torch.unique(second.candidate_ids.flatten(0, 1), dim=0).shape[0]
    assert rows[2] == first_names  # the training call encoded its names again
    for a, b in zip(reused, alone, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(trained, alone[0])


def test_mention_contexts_in_length_chunks_equal_one_padded_call(
    tokenizer, one_thread, monkeypatch
):
    from dataclasses import replace

    from kfacel.models import bert

    monkeypatch.setattr(bert, "MENTION_CHUNK", 2)
    examples = [  # left contexts of 0 to 5 words
        replace(ex, left_context=" ".join(ex.left_context.split()[:i]))
        for i, ex in enumerate(synthetic_examples(6, seed=11))
    ]
    batch = Collator(tokenizer, max_mention_length=32)(examples)
    assert len(set(batch.mention_mask.sum(1).tolist())) > 1  # contexts differ
    model = no_dropout("transformer")
    widths = []
    encode = model._encode_mention
    model._encode_mention = lambda i, m, *table: (
        widths.append(i.shape[1]),
        encode(i, m, *table),
    )[1]
    model.eval()  # gradients in eval mode: one padded call
    whole, whole_grads = logits_and_grads(model, batch)
    model.train()  # training: chunks of 2 contexts, each cut to its longest
    chunked, chunked_grads = logits_and_grads(model, batch)
    assert widths[0] == batch.mention_ids.shape[1]
    assert len(widths) == 1 + 3
    assert min(widths[1:]) < widths[0]
    torch.testing.assert_close(chunked, whole)
    assert_same_grads(chunked_grads, whole_grads)


def test_a_chunked_training_forward_looks_its_words_up_once(
    tokenizer, one_thread, monkeypatch
):
    from kfacel.models import bert

    monkeypatch.setattr(bert, "MENTION_CHUNK", 2)
    # each encoder call looking its tokens up would write a dense vocabulary-sized
    # gradient in the backward; the chunked path gathers from one lookup (TokenTable)
    examples = synthetic_examples(6, seed=2)
    batch = Collator(tokenizer, max_mention_length=16)(examples)
    model = no_dropout("transformer")
    calls = []
    words = model.encoder.embeddings.word_embeddings
    words.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    model.eval()  # the curvature path: one lookup per encoder call
    model(batch)
    assert len(calls) == 2  # the mentions, the names
    calls.clear()
    model.train()
    encoder_calls = []
    model.encoder.register_forward_hook(lambda m, i, o: encoder_calls.append(1))
    model(batch)
    assert len(encoder_calls) == 3 + 1  # mentions in chunks of 2, the names
    assert len(calls) == 1  # one lookup, of the distinct ids as one flat row
    assert len(calls[0]) == 1
    ids = torch.cat([batch.mention_ids.flatten(), batch.candidate_ids.flatten()])
    assert calls[0][0] == torch.unique(ids).numel()
