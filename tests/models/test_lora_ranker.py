"""The transformer ranker with LoRA adapters: what trains, what K-FAC covers, what is saved."""

import copy

import pytest
import torch

from kfacel.consolidation.consolidate import ConsolidationSettings, consolidate
from kfacel.curvature import estimate_kfac
from kfacel.models import build_model, load_model, save_model
from kfacel.training.trainer import TrainSettings, train_task
from tests._synth import TINY_BERT

pytest.importorskip("peft")
pytestmark = pytest.mark.hf


def lora_ranker(rank: int = 4):
    torch.manual_seed(0)
    return build_model(
        "transformer", encoder_config=TINY_BERT, layers=2, lora_rank=rank, dropout=0.0
    )


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_only_the_adapters_and_the_scorer_train(synthetic_batches, one_thread) -> None:
    model = lora_ranker()
    trainable = _trainable(model)
    adapters = {n for n in trainable if ".lora_" in n}
    assert adapters  # rank-4 A and B on 2 layers' query and value
    assert len(adapters) == 2 * 2 * 2
    assert trainable - adapters == {n for n in trainable if n.startswith("scorer.")}
    frozen = {
        n: p.detach().clone() for n, p in model.named_parameters() if n not in trainable
    }
    before = {
        n: p.detach().clone() for n, p in model.named_parameters() if n in adapters
    }
    train, dev = synthetic_batches
    train_task(
        model, train[:4], TrainSettings(epochs=1, lr=1e-2, seed=0), dev_batches=dev
    )
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in before.items())


def test_a_saved_lora_ranker_loads_back_with_the_same_logits(
    synthetic_batches, tmp_path
) -> None:
    model = lora_ranker()
    with torch.no_grad():  # adapters away from their zero start, so they count
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    batch = synthetic_batches[1][0]
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.lora_rank == 4
    assert _trainable(loaded) == _trainable(model)
    torch.testing.assert_close(loaded(batch), model.eval()(batch))
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.zero_()
    assert not torch.allclose(plain(batch), model(batch))  # the adapters were used


def test_kfac_covers_the_adapters_and_the_scorer_only(synthetic_batches) -> None:
    model = lora_ranker()
    batch = synthetic_batches[1][0]
    layers = set(estimate_kfac(model, [(batch, batch.labels)]))
    assert {n for n in layers if ".lora_" in n} == {
        n.rsplit(".", 1)[0] for n in _trainable(model) if ".lora_" in n
    }
    assert all(".lora_" in n or n.startswith("scorer.") for n in layers)
    state = consolidate(
        model, [(batch, batch.labels)], ConsolidationSettings(), task="A"
    )
    assert set(state.anchor) == _trainable(model)


def test_a_negative_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="lora_rank must be 0 or more, got -1"):
        lora_ranker(-1)
