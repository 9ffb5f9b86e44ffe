"""PEFT/LoRA: only the trainable adapters are consolidated and penalized; the base stays."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
hf = pytest.importorskip("kfacel.hf")

from tests.hf._tiny import bert_config, pad_collator, sequence_rows  # noqa: E402
from tests.hf.test_trainer import _args  # noqa: E402

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
        args=_args(tmp_path, 8, 1, steps=2),
        train_dataset=sequence_rows(8, seed=1, offset=19),
        data_collator=pad_collator,
        states=[state],
        lam=100.0,
    )
    trainer.train()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any("kfc_penalty" in h for h in trainer.state.log_history)
