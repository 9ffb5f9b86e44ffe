"""PEFT/LoRA: only the trainable adapters are consolidated and penalized; the base stays."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
hf = pytest.importorskip("kfacel.hf")

from tests.hf._tiny import (  # noqa: E402
    bert_config,
    pad_collator,
    sequence_rows,
    training_args,
)

pytestmark = pytest.mark.hf


def _lora_model():
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(bert_config())
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0
    )
    return peft.get_peft_model(base, config)


def test_lora_state_covers_only_the_adapters_and_training_moves_only_them(tmp_path):
    model = _lora_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = hf.consolidate(
        model, sequence_rows(8, seed=0), data_collator=pad_collator, task="A"
    )
    assert set(state.anchor) == trainable
    layers = set(state.curvature)
    assert layers
    assert all("lora_A" in n or "lora_B" in n for n in layers)
    frozen = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if not p.requires_grad
    }
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 8, 1, steps=2),
        train_dataset=sequence_rows(8, seed=1, offset=19),
        data_collator=pad_collator,
        states=[state],
        strength=hf.Strength(lam=100.0),
    )
    trainer.train()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any("kfc_penalty" in h for h in trainer.state.log_history)


def test_lora_factors_are_kept_at_the_adapter_rank_unless_asked_otherwise():
    """``factor_rank="auto"`` keeps the large factors at the LoRA rank (K10).

    The ``[32, 32]`` factors of A's input and B's output at rank r = 4; ``None`` keeps
    them whole; the small ``[4, 4]`` ones stay whole.
    """
    from kfacel.curvature.factors import LowRankFactor

    model = _lora_model()
    rows = sequence_rows(8, seed=0)
    auto = hf.consolidate(model, rows, data_collator=pad_collator, task="A")
    whole = hf.consolidate(
        model, rows, data_collator=pad_collator, task="A", factor_rank=None
    )
    assert auto.meta["factor_rank"] == 4
    assert "factor_rank" not in whole.meta
    for name, f in auto.curvature.items():
        big, small = ("A", "G") if "lora_A" in name else ("G", "A")
        assert isinstance(getattr(f, big), LowRankFactor), name
        assert getattr(f, big).rank == 4
        torch.testing.assert_close(
            getattr(f, small), getattr(whole.curvature[name], small)
        )
    assert auto.nbytes() < 0.7 * whole.nbytes()
    with pytest.raises(ValueError, match="factor_rank must be >= 1"):
        hf.consolidate(model, rows, data_collator=pad_collator, task="A", factor_rank=0)


def test_auto_rank_keeps_a_trained_head_whole():
    """A PEFT classifier whose head is trained too: only the LoRA layers are cut."""
    from kfacel.curvature.factors import LowRankFactor

    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(bert_config())
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )
    model = peft.get_peft_model(base, config)
    state = hf.consolidate(
        model, sequence_rows(8, seed=0), data_collator=pad_collator, task="A"
    )
    heads = [n for n in state.curvature if "classifier" in n]
    assert heads
    for name, f in state.curvature.items():
        cut = isinstance(f.A, LowRankFactor) or isinstance(f.G, LowRankFactor)
        assert cut == (".lora_" in name), name
