"""The transformer ranker with LoRA adapters: what trains, what K-FAC covers, what is saved."""

import copy

import pytest
import torch

from kfacel.consolidation.consolidate import ConsolidationSettings, consolidate
from kfacel.curvature import estimate_kfac
from kfacel.models import load_model, save_model
from kfacel.training.trainer import TrainSettings, train_task
from tests._synth import lora_ranker

pytest.importorskip("peft")
pytestmark = pytest.mark.hf


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


# ---------------------------------------------------------------- O-LoRA on the ranker


def _trained_adapters(model) -> None:
    with (
        torch.no_grad()
    ):  # adapters away from their start, as a finished task leaves them
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.1)


def test_a_new_adapter_starts_from_the_same_function(synthetic_batches) -> None:
    from kfacel.penalties.olora import lora_subspaces, start_new_adapter

    model = lora_ranker().eval()
    _trained_adapters(model)
    batch = synthetic_batches[1][0]
    with torch.no_grad():
        before = model(batch)
    old = lora_subspaces(model)
    earlier = start_new_adapter(model)
    assert earlier.keys() == old.keys()
    assert all(torch.equal(earlier[n], old[n]) for n in old)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), before, atol=1e-5, rtol=1e-5)
    fresh = lora_subspaces(model)
    assert all(not torch.equal(fresh[n], old[n]) for n in old)  # A drawn anew
    assert all(
        torch.count_nonzero(p) == 0
        for n, p in model.named_parameters()
        if "lora_B" in n  # B starts at zero
    )


def test_the_orthogonality_gradient_is_autograd_s() -> None:
    """Eq. O2 added by ``add_grad_`` against autograd of eq. O1."""
    from kfacel.penalties.olora import OrthogonalSubspaces, lora_a_weights

    model = lora_ranker()
    _trained_adapters(model)
    torch.manual_seed(1)
    earlier = {n: torch.randn(3, p.shape[1]) for n, p in lora_a_weights(model).items()}
    penalty = OrthogonalSubspaces(earlier, 0.7)
    params = list(lora_a_weights(model).values())
    value = penalty(model)
    expected = torch.autograd.grad(value, params)
    for p in params:
        p.grad = None
    got = penalty.add_grad_(model)
    assert float(got) == pytest.approx(float(value.detach()), rel=1e-5)
    for p, g in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("lam", [0.0, 50.0])
def test_training_with_olora_keeps_the_new_adapter_orthogonal(
    synthetic_batches, one_thread, lam
) -> None:
    from kfacel.penalties.olora import OrthogonalSubspaces, start_new_adapter

    model = lora_ranker()
    _trained_adapters(model)
    earlier = start_new_adapter(model)
    penalty = OrthogonalSubspaces(earlier, lam)
    start = float(OrthogonalSubspaces(earlier, 1.0)(model))
    train, _ = synthetic_batches
    settings = TrainSettings(epochs=2, lr=1e-2, seed=0)
    train_task(model, train[:6], settings, penalty=penalty)
    after = float(OrthogonalSubspaces(earlier, 1.0)(model))
    if lam == 0.0:
        assert after > 0.5 * start  # the task alone does not remove the overlap
    else:
        assert after < 0.05 * start


def test_olora_is_refused_beside_a_penalty() -> None:
    from kfacel.training.continual import ContinualSettings

    with pytest.raises(ValueError, match="olora must be a λ ≥ 0 with penalty 'none'"):
        ContinualSettings(penalty="kfac", olora=0.5)
    with pytest.raises(ValueError, match="olora must be"):
        ContinualSettings(olora=-1.0)
    assert "O-LoRA λ=0.5" in ContinualSettings(olora=0.5).describe(["A"])
