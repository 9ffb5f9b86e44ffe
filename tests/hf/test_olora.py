"""O-LoRA: the orthogonality gradient against autograd, and training that keeps it small."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
olora = pytest.importorskip("kfacel.hf.olora")

from kfacel.penalties.olora import lora_a_weights  # noqa: E402
from tests.hf._tiny import (  # noqa: E402
    classifier,
    pad_collator,
    sequence_rows,
    training_args,
)

pytestmark = pytest.mark.hf


def _adapter(model, seed: int):
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0,
        init_lora_weights=False,  # random A and B: a non-zero update at once
    )  # fmt: skip
    return peft.get_peft_model(model, config)


def _task_a():
    """An adapter trained on nothing but initialised at random: task A's subspace."""
    first = _adapter(classifier(), seed=1)
    return olora.lora_subspaces(first), first.merge_and_unload()


def test_the_added_gradient_is_that_of_lambda_times_the_orthogonality() -> None:
    earlier, base = _task_a()
    model = _adapter(base, seed=2)
    cb = olora.OLoRACallback(earlier, lam=0.7)
    cb.bind(model)
    params = [p for n, p in model.named_parameters() if "lora_A" in n]
    loss = 0.7 * sum(
        (earlier[n] @ a.T).pow(2).sum() for n, a in _named_a(model).items()
    )
    expected = torch.autograd.grad(loss, params)
    for p in params:
        p.grad = None
    cb.on_pre_optimizer_step(None, None, None)
    for p, g in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert olora.orthogonality(model, earlier) == pytest.approx(float(loss) / 0.7)


def _named_a(model):
    return lora_a_weights(model)


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_training_with_lambda_keeps_the_new_subspace_orthogonal(tmp_path, lam) -> None:
    earlier, base = _task_a()
    model = _adapter(base, seed=2)
    before = olora.orthogonality(model, earlier)
    trainer = transformers.Trainer(
        model=model,
        args=training_args(tmp_path, 8, 1, steps=6),
        train_dataset=sequence_rows(16, seed=3),
        data_collator=pad_collator,
        callbacks=[olora.OLoRACallback(earlier, lam=lam)],
    )
    trainer.train()
    after = olora.orthogonality(model, earlier)
    if lam == 0.0:
        assert after > 0.5 * before  # the task alone does not remove the overlap
    else:
        assert after < 1e-3 * before


def test_stacked_subspaces_hold_every_task_by_rows() -> None:
    a = {"x": torch.ones(2, 5)}
    b = {"x": torch.zeros(3, 5), "y": torch.ones(1, 4)}
    stacked = olora.stack_subspaces(a, b)
    assert stacked["x"].shape == (5, 5)
    assert stacked["y"].shape == (1, 4)


@pytest.mark.parametrize(
    ("earlier", "lam", "match"),
    [
        ({}, -1.0, "lam must be >= 0"),
        ({"bert.nope.query": torch.ones(4, 32)}, 1.0, "layer bert.nope.query has no"),
        ({"KEY": torch.ones(4, 31)}, 1.0, "earlier A reads 31 inputs, the adapter 32"),
    ],
)
def test_subspaces_that_do_not_fit_are_refused_naming_the_layer(
    earlier, lam, match
) -> None:
    model = _adapter(classifier(), seed=2)
    if "KEY" in earlier:
        earlier = {next(iter(_named_a(model))): earlier["KEY"]}
    with pytest.raises(ValueError, match=match):
        olora.OLoRACallback(earlier, lam=lam).bind(model)


def test_a_model_without_lora_has_no_subspace() -> None:
    with pytest.raises(ValueError, match="no LoRA layer with adapter 'default'"):
        olora.lora_subspaces(classifier())
