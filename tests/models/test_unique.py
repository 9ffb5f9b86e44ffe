"""Repeated names encoded once: same logits and gradients as encoding every row."""

import pytest
import torch
from tests._synth import TINY_BERT, synthetic_examples

from kfacel.data.collate import FEATURE_NAMES, Collator
from kfacel.models import build_model


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


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_dedup_gives_the_same_values_and_gradients(name, tokenizer, one_thread):
    examples = synthetic_examples(4, seed=5)
    batch = Collator(tokenizer, max_mention_length=16)(examples + examples)
    model = no_dropout(name)
    rows = []
    encode = model._encode_name
    model._encode_name = lambda ids, mask: (rows.append(len(ids)), encode(ids, mask))[1]

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
    for a, b in zip(dedup_grads, full_grads, strict=True):
        if a is None or b is None:
            assert (a, b) == (None, None)
        else:
            torch.testing.assert_close(a, b)


def test_the_copy_back_gradient_is_bitwise_repeatable_with_two_threads():
    # many duplicates of few rows: the backward sums many gradients into each row,
    # which advanced indexing's backward (index_put_ with accumulate) does in a
    # thread-dependent order on the CPU; seeded training must not depend on it
    from kfacel.models._unique import encode_rows

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
