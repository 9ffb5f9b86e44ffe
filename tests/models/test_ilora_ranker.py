"""I-LoRA on the ranker (``training.ilora``): eqs. I1 and I2 against hand computations."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kfacel.training.ilora import SlowLearner
from kfacel.training.trainer import TrainSettings, train_task
from tests._synth import lora_ranker

pytest.importorskip("peft")
pytestmark = pytest.mark.hf


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_the_memory_terms_and_their_gradient(synthetic_batches) -> None:
    """Eq. I2's memory terms: CE on the memory plus γ·MSE to the slow learner's logits."""
    model = lora_ranker().eval()  # no dropout: the two forwards are one function
    memory = synthetic_batches[1][:1]  # one batch: every draw is it
    learner = SlowLearner(model, memory, consistency=3.0)
    with torch.no_grad():  # the fast learner away from the slow one
        for p in _trainable(model).values():
            p.add_(0.05 * torch.randn_like(p))
    batch = memory[0]
    slow = copy.deepcopy(learner.slow)
    fast = model(batch)
    want = F.cross_entropy(fast, batch.labels) + 3.0 * F.mse_loss(
        fast, slow(batch).detach()
    )
    params = list(_trainable(model).values())
    expected = torch.autograd.grad(want, params)
    for p in params:
        p.grad = None
    got = learner.add_grad_(model)
    assert float(got) == pytest.approx(float(want.detach()), rel=1e-5)
    for p, g in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_the_slow_learner_is_the_moving_average_and_is_kept(synthetic_batches) -> None:
    """Eq. I1 over the trainable parameters; frozen ones untouched; finish keeps it."""
    model = lora_ranker()
    learner = SlowLearner(model, synthetic_batches[1][:1], ema=0.9)
    start = {n: p.detach().clone() for n, p in _trainable(model).items()}
    frozen = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if not p.requires_grad
    }
    seen = []
    for _ in range(3):
        with torch.no_grad():
            for p in _trainable(model).values():
                p.add_(torch.randn_like(p))
        seen.append({n: p.detach().clone() for n, p in _trainable(model).items()})
        learner.after_task_step()
    for n, s0 in start.items():
        want = s0
        for w in seen:
            want = 0.9 * want + 0.1 * w[n]
        torch.testing.assert_close(dict(learner.slow.named_parameters())[n], want)
    learner.finish()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])
        else:
            torch.testing.assert_close(p, dict(learner.slow.named_parameters())[n])


def test_training_with_a_memory_keeps_the_old_task_better(synthetic_batches) -> None:
    """A, then B (A's queries with other gold candidates): I-LoRA keeps A better."""
    a = synthetic_batches[0][:6]
    b = [replace(x, labels=(x.labels + 1) % x.candidate_valid.shape[1]) for x in a]
    settings = TrainSettings(epochs=3, lr=1e-2, seed=0)
    model = lora_ranker()
    train_task(model, a, settings)
    plain, kept = copy.deepcopy(model), copy.deepcopy(model)
    train_task(plain, b, settings)
    learner = SlowLearner(kept, a, ema=0.5)
    train_task(kept, b, settings, penalty=learner)
    learner.finish()

    def loss(m, batches) -> float:
        m.eval()
        with torch.no_grad():
            return sum(float(F.cross_entropy(m(x), x.labels)) for x in batches)

    assert loss(kept, a) < 0.8 * loss(plain, a)  # measured: 6.71 against 9.46


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory": []}, "memory is empty"),
        ({"ema": 1.0}, "ema must be in"),
        ({"consistency": -1.0}, "consistency must be"),
    ],
)
def test_bad_settings_are_refused(synthetic_batches, kwargs, match) -> None:
    args = {"memory": synthetic_batches[1][:1]} | kwargs
    with pytest.raises(ValueError, match=match):
        SlowLearner(lora_ranker(), **args)


def test_ilora_needs_its_memory_and_no_penalty() -> None:
    from kfacel.training.continual import ContinualSettings
    from kfacel.training.trainer import Replay

    with pytest.raises(ValueError, match="ilora needs replay"):
        ContinualSettings(ilora=True)
    with pytest.raises(ValueError, match="ilora needs replay"):
        ContinualSettings(penalty="kfac", ilora=True, replay=Replay([1]))
    line = ContinualSettings(ilora=True, replay=Replay([1, 2])).describe(["A"])
    assert "I-LoRA with a memory of 2 queries" in line
