"""train_task: learning, seeded determinism, best epoch, penalty hook, errors, DDP."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from _training_synth import batches, tiny_cnn
from safetensors.torch import load_file

from kfacel.training.evaluate import evaluate
from kfacel.training.trainer import lr_factor, train_task


def test_training_lowers_the_loss_and_keeps_the_best_dev_epoch(train_dev):
    train, dev = train_dev
    model = tiny_cnn()
    log = train_task(model, train, epochs=4, lr=1e-2, dev_batches=dev, seed=0)
    assert log.epochs[-1].loss < log.epochs[0].loss
    best = max(e.dev_accuracy for e in log.epochs)
    assert log.best_dev_accuracy == best
    assert log.epochs[log.best_epoch - 1].dev_accuracy == best
    assert evaluate(model, dev).accuracy == pytest.approx(best)
    assert log.queries_per_s > 0
    assert not model.training


def test_a_seeded_cpu_run_is_identical_twice(train_dev):
    train, dev = train_dev
    states, logs = [], []
    for _ in range(2):
        model = tiny_cnn()
        logs.append(
            train_task(model, train, epochs=2, lr=1e-2, dev_batches=dev, seed=7)
        )
        states.append(model.state_dict())
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    assert [e.loss for e in logs[0].epochs] == [e.loss for e in logs[1].epochs]


class CountingPenalty:
    """R(θ) = c·Σθ: adds c to every gradient and counts the calls."""

    num_tasks = 1

    def __init__(self, c: float) -> None:
        self.c, self.calls = c, 0

    def __call__(self, model):
        return self.c * sum(p.sum() for p in model.parameters())

    def add_grad_(self, model):
        self.calls += 1
        for p in model.parameters():
            assert p.grad is not None  # called after backward
            p.grad.add_(self.c)
        return self(model).detach()


def test_the_penalty_gradient_is_added_after_backward_and_logged(train_dev):
    train, _ = train_dev
    penalty = CountingPenalty(1e-6)
    log = train_task(tiny_cnn(), train, penalty=penalty, epochs=1, lr=1e-3, seed=0)
    assert penalty.calls == len(train)
    assert log.epochs[0].penalty != 0.0
    assert log.epochs[0].loss > log.epochs[0].penalty


class NaNModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(1, 1)

    def forward(self, batch):
        return self.w(batch.features[..., :1]).squeeze(-1) * float("nan")


def test_a_nan_loss_stops_with_a_clear_error(train_dev):
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1"):
        train_task(NaNModel(), train_dev[0], epochs=1, lr=1e-3)


def test_parameter_groups_set_their_own_learning_rate(train_dev):
    model = tiny_cnn()
    frozen = {k: v.clone() for k, v in model.scorer.state_dict().items()}
    groups = [
        {"params": list(model.scorer.parameters()), "lr": 0.0},
        {"params": [p for n, p in model.named_parameters() if "scorer" not in n]},
    ]
    train_task(model, train_dev[0], epochs=1, lr=1e-2, lr_groups=groups, seed=0)
    for k, v in model.scorer.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_the_linear_schedule_warms_up_then_decays_as_written():
    # 10 steps, warm-up share 0.2 -> 2 warm-up steps, then 8 decaying ones
    got = [lr_factor(s, 10, schedule="linear", warmup=0.2) for s in range(10)]
    want = [0.5, 1.0, 8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert got == pytest.approx(want)
    assert lr_factor(3, 10, schedule="constant", warmup=0.5) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, schedule="cosine")
    with pytest.raises(ValueError, match="warmup"):
        lr_factor(0, 10, schedule="linear", warmup=1.0)


def test_train_task_follows_the_schedule_in_every_group(train_dev):
    train = train_dev[0]
    steps = len(train)
    model = tiny_cnn()
    groups = [
        {"params": list(model.scorer.parameters()), "lr": 4e-3},
        {"params": [p for n, p in model.named_parameters() if "scorer" not in n]},
    ]
    log = train_task(
        model, train, epochs=2, lr=1e-2, lr_groups=groups, schedule="linear", seed=0
    )
    # the last step of epoch e is step e·steps − 1: factor (total − step)/total
    total = 2 * steps
    assert log.epochs[0].lr == pytest.approx(4e-3 * (total - steps + 1) / total)
    assert log.epochs[1].lr == pytest.approx(4e-3 * 1 / total)
    constant = train_task(tiny_cnn(), train, epochs=1, lr=1e-2, seed=0)
    assert constant.epochs[0].lr == 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned interpreters: 20-60 s on a shared 2-core machine
def test_two_gloo_ranks_train_the_same_model_as_one_process(tmp_path):
    import _ddp_worker

    out = str(tmp_path / "ddp.safetensors")
    mp.spawn(_ddp_worker.run, args=(2, _free_port(), out), nprocs=2, join=True)
    single = tiny_cnn(dropout=0.0).double()
    train_task(single, batches(32, 0, 8), epochs=2, lr=1e-2, seed=0)
    ddp = load_file(out)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-9, atol=1e-10)
