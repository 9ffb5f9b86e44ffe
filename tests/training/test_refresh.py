"""Refresh learning's unlearning move (eq. R1) against hand computation, and in training."""

import math

import pytest
import torch
import torch.nn.functional as F
from _training_synth import tiny_cnn

from kfacel.training.refresh import unlearn_
from kfacel.training.trainer import TrainSettings, train_task


def _adam_after_one_step(grad0: torch.Tensor, lr: float = 0.1):
    p = torch.nn.Parameter(torch.zeros_like(grad0))
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=0.0)
    p.grad = grad0.clone()
    opt.step()
    return p, opt


def test_the_move_is_rho_times_an_adam_step_up_the_gradient_clipped():
    p, opt = _adam_after_one_step(torch.tensor([0.5, -2.0, 1e-3]))
    before = p.detach().clone()
    g = torch.tensor([1.0, 3.0, -4.0])
    p.grad = g.clone()
    assert unlearn_(opt, 0.5) == 1
    beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
    v = beta2 * (1 - beta2) * torch.tensor([0.5, -2.0, 1e-3]) ** 2 + (1 - beta2) * g**2
    v_hat = v / (1 - beta2**2)  # Adam's second step would see this
    ratio = (g / (v_hat.sqrt() + eps)).clamp(-1, 1)  # the third is clipped at 1
    assert ratio[2] == -1
    torch.testing.assert_close(p.detach(), before + 0.5 * 0.1 * ratio)


def test_nothing_moves_before_adams_first_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    assert unlearn_(opt, 1.0) == 0
    assert torch.equal(p.detach(), torch.ones(3))


def test_under_sgd_it_is_plain_gradient_ascent():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.2, momentum=0.9)
    p.grad = torch.tensor([1.0, -2.0])
    unlearn_(opt, 0.5)
    torch.testing.assert_close(p.detach(), torch.tensor([0.1, -0.2]))


def test_the_noise_has_the_langevin_variance():
    n = 200_000
    p, opt = _adam_after_one_step(torch.full((n,), 2.0), lr=0.01)
    p.data.zero_()
    p.grad = torch.zeros(n)  # noise alone
    unlearn_(opt, 0.5, temperature=3.0, generator=torch.Generator().manual_seed(0))
    beta2 = opt.param_groups[0]["betas"][1]
    v_hat = beta2 * (1 - beta2) * 4.0 / (1 - beta2**2)
    d = math.sqrt(v_hat) + opt.param_groups[0]["eps"]  # √v̂ + ε
    want = math.sqrt(2 * 0.5 * 0.01 * 3.0 / d)
    assert p.detach().std().item() == pytest.approx(want, rel=0.02)
    assert abs(p.detach().mean().item()) < 5 * want / math.sqrt(n)


def test_a_weight_first_used_now_moves_a_bounded_step_and_gets_no_noise():
    p, opt = _adam_after_one_step(torch.tensor([1.0, 0.0]))
    p.data.zero_()
    p.grad = torch.tensor([0.0, 5.0])  # the second weight's first gradient
    unlearn_(opt, 1.0, temperature=0.0)
    # η |g| / √((1−β₂) g² / (1−β₂²)) = η √(1+β₂) > η: clipped to one Adam step, η
    assert p.detach()[1].item() == pytest.approx(0.1)
    unused = torch.nn.Parameter(torch.zeros(3))
    opt2 = torch.optim.AdamW([unused], lr=0.1)
    unused.grad = torch.zeros(3)
    opt2.step()  # a step with a zero gradient: v̂ = 0
    unlearn_(opt2, 1.0, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unused.detach(), torch.zeros(3))


def test_a_small_move_raises_the_batch_loss():
    # first order: L(θ + η D⁻¹g) − L(θ) ≈ η gᵀD⁻¹g > 0
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = torch.optim.AdamW([w], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(x @ w, y).backward()
        opt.step()
    opt.zero_grad()
    loss = F.cross_entropy(x @ w, y)
    loss.backward()
    unlearn_(opt, 0.1)
    assert F.cross_entropy(x @ w, y).item() > loss.item()


def test_training_with_refresh_is_seeded_and_differs_from_without(train_dev):
    train, dev = train_dev

    def run(**kw):
        model = tiny_cnn()
        s = TrainSettings(epochs=2, lr=1e-2, seed=3, **kw)
        log = train_task(model, train, s, dev_batches=dev)
        return model.state_dict(), log

    plain, _ = run()
    first, log = run(refresh=0.5, refresh_temperature=1e-6)
    again, _ = run(refresh=0.5, refresh_temperature=1e-6)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], plain[k]) for k in first)
    assert math.isfinite(log.epochs[-1].loss)


@pytest.mark.parametrize("name", ["refresh", "refresh_temperature"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_settings_refuse_a_negative_or_non_finite_refresh(name, value):
    with pytest.raises(ValueError, match=name):
        TrainSettings(**{name: value})
