"""train_task: learning, best epoch, penalty, clipping, replay, schedule, seeds, errors, DDP."""

import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from _training_synth import batches, tiny_cnn
from safetensors.torch import load_file

from kfacel.linking.evaluate import evaluate
from kfacel.training.trainer import Replay, TrainSettings, lr_factor, train_task


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 1, "lr": 1e-2, "seed": 0, **kw})


def test_training_lowers_the_loss(train_dev):
    train, dev = train_dev
    model = tiny_cnn()
    log = train_task(model, train, settings(epochs=4), dev_batches=dev)
    assert log.epochs[-1].loss < log.epochs[0].loss
    assert log.queries_per_s > 0
    assert not model.training


def test_the_best_dev_epoch_is_restored_when_dev_gets_worse(train_dev):
    # dev = the training queries with every gold moved to another candidate: the better
    # the model fits the training set, the worse it does on this dev set
    train, _ = train_dev
    anti = [
        replace(b, labels=(b.labels + 1) % b.candidate_valid.shape[1]) for b in train
    ]
    model = tiny_cnn()
    log = train_task(model, train, settings(epochs=4, lr=1e-4), dev_batches=anti)
    accs = [e.dev_accuracy for e in log.epochs]
    assert accs[-1] < max(accs)  # the last epoch is not the best: a restore is needed
    assert log.best_epoch == accs.index(max(accs)) + 1 < 4
    assert log.best_dev_accuracy == max(accs)
    assert evaluate(model, anti).accuracy == pytest.approx(max(accs))


def test_a_seeded_cpu_run_is_identical_twice_and_leaves_the_global_rng(train_dev):
    train, dev = train_dev
    states, logs = [], []
    for _ in range(2):
        model = tiny_cnn()
        rng = torch.get_rng_state()
        logs.append(
            train_task(model, train, settings(epochs=2, seed=7), dev_batches=dev)
        )
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
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
    log = train_task(tiny_cnn(), train, settings(lr=1e-3), penalty=penalty)
    assert penalty.calls == len(train)
    assert log.epochs[0].penalty != 0.0
    assert log.epochs[0].loss > log.epochs[0].penalty


def _grad_norm(model: torch.nn.Module) -> float:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


def test_clipping_bounds_the_total_gradient_penalty_included(train_dev):
    # the last step's gradient stays in .grad: clipped to the bound, or far above it
    train = train_dev[0][:2]
    clipped, free = tiny_cnn(), tiny_cnn()
    train_task(clipped, train, settings(clip=0.01), penalty=CountingPenalty(1.0))
    train_task(free, train, settings(clip=None), penalty=CountingPenalty(1.0))
    assert _grad_norm(clipped) == pytest.approx(0.01, rel=1e-4)
    assert _grad_norm(free) > 1.0
    task_only = tiny_cnn()
    penalty = CountingPenalty(1.0)
    s = settings(clip=0.01, clip_task_only=True)
    train_task(task_only, train, s, penalty=penalty)
    # the penalty's gradient (1 per entry) is added after the task gradient is clipped
    ones = torch.cat([torch.ones_like(p).flatten() for p in task_only.parameters()])
    assert _grad_norm(task_only) == pytest.approx(ones.norm().item(), abs=0.011)


def test_sgd_with_momentum_learns(train_dev):
    train, dev = train_dev
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = train_task(
        model, train, settings(epochs=3, optimizer="sgd", lr=0.1), dev_batches=dev
    )
    assert log.epochs[-1].loss < log.epochs[0].loss
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainSettings(optimizer="lion")


class CountingModel(torch.nn.Module):
    """A tiny CNN that counts the forward calls on each batch (by its token ids)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.calls = tiny_cnn(dropout=0.0), {}

    def forward(self, batch):
        key = _key(batch)
        self.calls[key] = self.calls.get(key, 0) + 1
        return self.inner(batch)


def _key(batch) -> tuple:
    return tuple(batch.mention_ids.flatten().tolist())


def test_replay_takes_n_old_steps_after_every_m_new_ones(train_dev):
    train, old = train_dev[0][:6], batches(12, 5, 4)  # 3 old batches
    model = CountingModel()
    penalty = CountingPenalty(0.0)  # counts optimizer steps
    replay = Replay(old, every=2, n=3)
    train_task(model, train, settings(), penalty=penalty, replay=replay)
    assert penalty.calls == 6 + (6 // 2) * 3
    assert [model.calls.get(_key(b), 0) for b in old] == [3, 3, 3]  # a seeded cycle
    with pytest.raises(ValueError, match="replay every"):
        Replay(old, every=0)


class StepCountingPenalty(CountingPenalty):
    """Also counts ``after_task_step``: the calls a budget takes its dual step on."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.after = 0

    def after_task_step(self) -> None:
        self.after += 1


class InfGradModel(CountingModel):
    """Finite logits whose gradient is infinite on the batches in ``bad``."""

    def __init__(self, bad: set) -> None:
        super().__init__()
        self.bad = bad

    def forward(self, batch):
        logits = super().forward(batch)
        if _key(batch) in self.bad and logits.requires_grad:
            logits.register_hook(lambda g: g * float("inf"))
        return logits


def test_the_dual_step_follows_only_applied_steps_on_the_task(train_dev, monkeypatch):
    # a float16-style gradient scaler on the CPU skips the steps with infinite
    # gradients; replay steps are never the task's
    monkeypatch.setattr("kfacel.training.trainer.needs_scaler", lambda *a: True)
    train, old = train_dev[0][:6], batches(12, 5, 4)
    model = InfGradModel({_key(train[1]), _key(train[4])})
    penalty = StepCountingPenalty()
    replay = Replay(old, every=2, n=3)
    train_task(model, train, settings(), penalty=penalty, replay=replay)
    assert penalty.calls == 6 + (6 // 2) * 3  # the gradient on every step
    assert penalty.after == 6 - 2  # the dual step on the applied task steps only


def test_a_nan_loss_stops_with_a_clear_error(train_dev):
    class NaNModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(1, 1)

        def forward(self, batch):
            return self.w(batch.features[..., :1]).squeeze(-1) * float("nan")

    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, batch 1"):
        train_task(NaNModel(), train_dev[0], settings())


class InfPenalty(CountingPenalty):
    """Finite for ``finite`` steps, then infinite."""

    def __init__(self, finite: int) -> None:
        super().__init__(0.0)
        self.finite = finite

    def add_grad_(self, model):
        value = super().add_grad_(model)
        return value + (float("inf") if self.calls > self.finite else 0.0)


def test_an_infinite_penalty_before_any_step_is_not_blamed_on_lambda(train_dev):
    with pytest.raises(
        FloatingPointError, match="batch 1: it is so before any step, at the weights"
    ):
        train_task(tiny_cnn(), train_dev[0], settings(), penalty=InfPenalty(0))
    with pytest.raises(FloatingPointError, match=r"inf at epoch 1, batch 3: lower λ$"):
        train_task(tiny_cnn(), train_dev[0], settings(), penalty=InfPenalty(2))


def test_parameter_groups_set_their_own_learning_rate(train_dev):
    model = tiny_cnn()
    frozen = {k: v.clone() for k, v in model.scorer.state_dict().items()}
    groups = [
        {"params": list(model.scorer.parameters()), "lr": 0.0},
        {"params": [p for n, p in model.named_parameters() if "scorer" not in n]},
    ]
    train_task(model, train_dev[0], settings(), lr_groups=groups)
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
        model, train, settings(epochs=2, schedule="linear"), lr_groups=groups
    )
    # the last step of epoch e is step e·steps − 1: factor (total − step)/total
    total = 2 * steps
    assert log.epochs[0].lr == pytest.approx(4e-3 * (total - steps + 1) / total)
    assert log.epochs[1].lr == pytest.approx(4e-3 * 1 / total)
    constant = train_task(tiny_cnn(), train, settings())
    assert constant.epochs[0].lr == 1e-2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("lr", -1.0),
        ("lr", float("inf")),
        ("lr", float("nan")),
        ("batch_size", 0),
        ("schedule", "cosine"),
        ("warmup", 1.0),
        ("clip", 0.0),
        ("weight_decay", -0.1),
        ("max_train", -15),
        ("precision", "float16"),
    ],
)
def test_settings_out_of_range_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        TrainSettings(**{field: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_cuda_device_is_refused_up_front():
    with pytest.raises(ValueError, match="sees no CUDA device"):
        TrainSettings(device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        TrainSettings(device="gpu0")


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
    train_task(single, batches(32, 0, 8), settings(epochs=2))
    ddp = load_file(out)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-9, atol=1e-10)


def test_training_on_sampled_candidates_sees_k_a_query_and_evaluates_all(train_dev):
    train, dev = train_dev
    model = tiny_cnn()
    widths = []
    forward = model.forward
    model.forward = lambda b: (
        widths.append((model.training, b.candidate_ids.shape[1])),
        forward(b),
    )[1]
    c = train[0].candidate_ids.shape[1]
    log = train_task(
        model, train, settings(epochs=2, train_candidates=2), dev_batches=dev
    )
    assert {w for t, w in widths if t} == {2}
    assert c > 2
    assert {w for t, w in widths if not t} == {dev[0].candidate_ids.shape[1]}
    assert log.epochs[-1].loss < log.epochs[0].loss
    with pytest.raises(ValueError, match=r"^train_candidates must be"):
        TrainSettings(train_candidates=1)


def test_bfloat16_autocast_runs_the_products_in_bfloat16_and_keeps_float32_weights(
    train_dev,
):
    train, dev = train_dev
    model = tiny_cnn()
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv1d):
            m.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    log = train_task(
        model, train, settings(epochs=4, precision="bfloat16"), dev_batches=dev
    )
    assert {d for t, d in seen if t} == {torch.bfloat16}  # training steps
    assert {d for t, d in seen if not t} == {torch.bfloat16}  # dev evaluation
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert log.epochs[-1].loss < log.epochs[0].loss
    # the same seed in float32 learns to about the same place (within 5% of the
    # distance the loss travelled)
    reference = tiny_cnn()
    ref = train_task(reference, train, settings(epochs=4), dev_batches=dev).epochs
    travelled = ref[0].loss - ref[-1].loss
    assert abs(log.epochs[-1].loss - ref[-1].loss) < 0.05 * travelled
    seen.clear()
    evaluate(model, dev)  # precision auto on the CPU: float32
    assert {d for _, d in seen} == {torch.float32}


@pytest.mark.parametrize("units", [True, False])
def test_auto_trains_and_evaluates_a_ranker_that_asks_in_bfloat16_on_bf16_cpus(
    train_dev, monkeypatch, units
):
    monkeypatch.setattr("kfacel.models.precision.cpu_has_bfloat16", lambda: units)
    train, dev = train_dev
    model = tiny_cnn()
    model.cpu_bfloat16 = True  # as the transformer ranker's class does
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv1d):
            m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    train_task(model, train[:2], settings(precision="auto"), dev_batches=dev[:1])
    evaluate(model, dev[:1])
    assert set(seen) == {torch.bfloat16 if units else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_kfc_penalty_gradient_under_bfloat16_is_float32s_to_its_precision(
    train_dev,
):
    import kfacel
    from kfacel.models.precision import penalty_autocast

    train, _ = train_dev
    model = tiny_cnn()
    fisher = kfacel.estimate_kfac(model, [(b, b.labels) for b in train])
    penalty = kfacel.KFACPenalty(damping=1e-6, damping_kind="factored").add_task(
        kfacel.snapshot(model), fisher, lam=10.0
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    grads = {}
    for precision in ("float32", "bfloat16"):
        model.zero_grad(set_to_none=True)
        with penalty_autocast("cpu", precision):
            value = penalty.add_grad_(model)
        grads[precision] = {n: p.grad.clone() for n, p in model.named_parameters()}
        assert all(g.dtype == torch.float32 for g in grads[precision].values())
        grads[precision]["R"] = value
    for name, exact in grads["float32"].items():
        err = (grads["bfloat16"][name] - exact).norm() / exact.norm()
        assert 0 < err < 2e-2, name  # bfloat16's products, not float32's: differs
