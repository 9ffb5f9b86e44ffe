"""KFCCallback: the penalty through the callback and optimizer hooks of any Trainer.

One SGD step of a plain ``Trainer``, a subclass and ``Seq2SeqTrainer`` with the callback
moves the weights by ``-lr · ∂R/∂θ`` more than without it; a step a gradient scaler
skips takes no dual step; checkpoints carry the states and λ_t, and a resumed run ends
with the λ_t of an uninterrupted one.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from kfacel.penalties import build_penalty
from kfacel.penalties.strength import DEFAULT_KFAC_DAMPING, Strength

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("kfacel.hf")

from kfacel.hf.callback import DUAL_FILE  # noqa: E402
from tests.hf._tiny import (  # noqa: E402
    LR,
    classifier,
    pad_collator,
    perturbed_state,
    sequence_rows,
    training_args,
)

pytestmark = pytest.mark.hf


class Subclass(transformers.Trainer):
    """A Trainer subclass of the kind users write (a custom loss)."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        return super().compute_loss(model, inputs, *args, **kwargs)


ARGS = {transformers.Seq2SeqTrainer: transformers.Seq2SeqTrainingArguments}


def _trained(cls, tmp_path, model, rows, callbacks):
    trainer = cls(
        model=model,
        args=training_args(tmp_path, 8, 1, cls=ARGS.get(cls)),
        train_dataset=rows,
        data_collator=pad_collator,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "cls", [transformers.Trainer, Subclass, transformers.Seq2SeqTrainer]
)
def test_any_trainer_with_the_callback_adds_minus_lr_times_the_gradient(tmp_path, cls):
    rows = sequence_rows(8, seed=0)
    model, state = perturbed_state(rows)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    penalty = build_penalty(
        "kfac", [state], [10.0], damping=DEFAULT_KFAC_DAMPING, damping_kind="factored"
    )
    value = penalty(model)
    grads = dict(
        zip(start, torch.autograd.grad(value, list(model.parameters())), strict=True)
    )
    callback = hf.KFCCallback([state], strength=Strength(lam=10.0))
    trainer, with_kfc = _trained(cls, tmp_path, model, rows, [callback])
    model.load_state_dict(start)
    _, plain = _trained(cls, tmp_path, model, rows, [])
    for name, g in grads.items():
        torch.testing.assert_close(
            with_kfc[name] - plain[name], -LR * g, rtol=1e-4, atol=1e-6, msg=name
        )
    (logged,) = [h for h in trainer.state.log_history if "kfc_penalty" in h]
    assert logged["kfc_penalty"] == pytest.approx(float(value.detach()), rel=1e-5)
    assert logged["kfc_lam/A"] == 10.0


def test_a_step_the_grad_scaler_skips_takes_no_dual_step():
    model = classifier()
    state = hf.consolidate(
        model, sequence_rows(4, seed=3), data_collator=pad_collator, task="X"
    )
    callback = hf.KFCCallback([state], model=model)
    (budget,) = callback.budgets
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    callback.on_pre_optimizer_step(None, None, None, optimizer=opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    scaler.scale(torch.ones(()))  # as a loss would be
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    next(model.parameters()).grad.fill_(float("inf"))
    scaler.step(opt)  # inf found: optimizer.step and its hooks are skipped
    scaler.update()
    assert callback.dual_steps == 0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    scaler.step(opt)
    assert callback.dual_steps == 1
    assert budget.rises[0] == budget.rises[0]  # q_t recorded (not NaN)


def _resumable(tmp_path, model, rows, callback, steps=4):
    args = training_args(tmp_path, 4, 1, steps=steps)
    args.save_strategy = "steps"
    args.save_steps = 2
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=pad_collator,
        callbacks=[callback],
    )


def test_a_resumed_run_restores_the_dual_state(tmp_path):
    """4 steps with a checkpoint at 2, resumed: λ_t as an uninterrupted run's."""
    rows = sequence_rows(16, seed=1, offset=19)
    model = classifier()
    state = hf.consolidate(
        model, sequence_rows(4, seed=3), data_collator=pad_collator, task="X"
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    budget = Strength(budget=1e-4, budget_rate=2.0)
    whole = hf.KFCCallback([state], strength=budget)
    _resumable(tmp_path / "whole", model, rows, whole).train()
    (lam,) = whole.budgets[0].lams
    assert lam > 0
    assert whole.dual_steps == 4
    ckpt = tmp_path / "whole" / "checkpoint-2"
    assert (ckpt / DUAL_FILE).is_file()
    saved = json.loads((ckpt / DUAL_FILE).read_text())
    assert saved["dual_steps"] == 2
    assert 0 < saved["lam"]["X"] < lam
    (loaded,) = hf.load_states(ckpt, model)
    assert loaded.task == "X"

    model.load_state_dict(start)
    again = hf.KFCCallback([state], strength=budget)
    _resumable(tmp_path / "again", model, rows, again).train()
    model.load_state_dict(start)
    resumed = hf.KFCCallback([state], strength=budget)
    trainer = _resumable(tmp_path / "again", model, rows, resumed)
    trainer.train(resume_from_checkpoint=str(tmp_path / "again" / "checkpoint-2"))
    assert resumed.dual_steps == 4
    assert resumed.budgets[0].lams == pytest.approx([lam], rel=1e-6)


def test_kfc_trainer_save_model_writes_the_states_and_lambda(tmp_path):
    model = classifier()
    state = hf.consolidate(
        model, sequence_rows(4, seed=3), data_collator=pad_collator, task="X"
    )
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 4, 1, steps=2),
        train_dataset=sequence_rows(8, seed=1, offset=19),
        data_collator=pad_collator,
        states=[state],
    )
    assert trainer.callback_handler.callbacks[0] is trainer.kfc  # logs reach report_to
    trainer.train()
    for _ in range(2):  # into the same directory twice: the states are replaced
        trainer.save_model(str(tmp_path / "out"))
    (loaded,) = hf.load_states(tmp_path / "out", model)
    assert loaded.task == "X"
    dual = json.loads((tmp_path / "out" / DUAL_FILE).read_text())
    assert dual == {"dual_steps": 2, "lam": {"X": trainer.kfc.budgets[0].lams[0]}}
