"""KFCTrainer: the penalty once per optimizer step in closed form, whatever the accumulation.

Compares one SGD step with and without the penalty against ``-lr · ∂R/∂θ`` from
autograd, for gradient accumulation 1 and 4; stock sequence and token classifiers
consolidate and train in seconds; states round-trip beside ``save_pretrained``. The
callback's own tests (plain Trainer, subclasses, checkpoints) are in test_callback.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from kfacel.penalties import build_penalty
from kfacel.penalties.strength import DEFAULT_BUDGET, DEFAULT_KFAC_DAMPING, Strength

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("kfacel.hf")

from tests.hf._tiny import (  # noqa: E402
    LR,
    bert_config,
    classifier,
    pad_collator,
    perturbed_state,
    sequence_rows,
    token_rows,
    training_args,
)

pytestmark = pytest.mark.hf


def _one_step(tmp_path, model, rows, accumulation, states, lam=10.0):
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 8 // accumulation, accumulation),
        train_dataset=rows,
        data_collator=pad_collator,
        states=states,
        strength=Strength(lam=lam) if states else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("accumulation", [1, 4])
def test_one_step_adds_minus_lr_times_the_penalty_gradient(tmp_path, accumulation):
    rows = sequence_rows(8, seed=0)
    model, state = perturbed_state(rows)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    # the defaults of every entry point: δ = DEFAULT_KFAC_DAMPING, factored (P4)
    penalty = build_penalty(
        "kfac", [state], [10.0], damping=DEFAULT_KFAC_DAMPING, damping_kind="factored"
    )
    value = penalty(model)
    expected = float(value.detach())
    grads = dict(
        zip(start, torch.autograd.grad(value, list(model.parameters())), strict=True)
    )
    trainer, with_kfc = _one_step(tmp_path, model, rows, accumulation, [state])
    model.load_state_dict(start)
    _, plain = _one_step(tmp_path, model, rows, accumulation, [])
    for name, g in grads.items():
        torch.testing.assert_close(
            with_kfc[name] - plain[name], -LR * g, rtol=1e-4, atol=1e-6, msg=name
        )
    logged = [h for h in trainer.state.log_history if "kfc_penalty" in h]
    assert len(logged) == 1
    assert logged[0]["kfc_penalty"] == pytest.approx(expected, rel=1e-5)
    assert logged[0]["kfc_lam/A"] == 10.0


def test_no_states_is_a_plain_trainer(tmp_path):
    rows = sequence_rows(8, seed=0)
    model = classifier()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, kfc = _one_step(tmp_path, model, rows, 1, [])
    model.load_state_dict(start)
    trainer = transformers.Trainer(
        model=model,
        args=training_args(tmp_path, 8, 1),
        train_dataset=rows,
        data_collator=pad_collator,
    )
    trainer.train()
    for name, p in model.named_parameters():
        torch.testing.assert_close(kfc[name], p.detach(), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"lam= is given as strength=Strength\(lam"):
        hf.KFCTrainer(
            model=model,
            args=training_args(tmp_path, 8, 1),
            states=[kfc_state(model)],
            lam=1.0,
        )


def test_no_strength_is_the_default_budget_with_a_per_run_dual_step(tmp_path):
    """As ``kfacel train --penalty kfac``: ε = DEFAULT_BUDGET, λ moves ≤ rate a run."""
    model = classifier()
    state = kfc_state(model)
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 4, 1, steps=4),
        train_dataset=sequence_rows(16, seed=1, offset=19),
        data_collator=pad_collator,
        states=[state],
        strength=Strength(budget_rate=0.5),
    )
    ((penalty, _),) = trainer.kfc_penalties
    assert penalty.budgets == [DEFAULT_BUDGET]
    trainer.train()
    assert penalty.rate == pytest.approx(0.5 / 4)  # over max_steps = 4
    # from λ = 0 each step adds at most rate · (λ + floor): the bound after 4 steps
    bound = 0.0
    for _ in range(4):
        bound += penalty.rate * (bound + penalty.floor)
    assert 0 < penalty.lams[0] <= bound + 1e-12


def kfc_state(model):
    return hf.consolidate(
        model, sequence_rows(4, seed=3), data_collator=pad_collator, task="X"
    )


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_stock_classifiers_consolidate_and_train_with_a_budget(tmp_path, head):
    """A: consolidate (K-FAC, LayerNorm diagonal); B: train under a forgetting budget."""
    if head == "sequence":
        model, rows_of = classifier(), sequence_rows
    else:
        torch.manual_seed(0)
        model = transformers.BertForTokenClassification(bert_config())
        rows_of = token_rows
    task_a, task_b = rows_of(16, seed=0), rows_of(16, seed=1, offset=19)
    state = hf.consolidate(model, task_a, data_collator=pad_collator, task="A")
    covered = set(state.curvature.param_names()) | set(state.curvature.diagonal)
    assert covered == set(state.anchor)  # every trainable parameter has curvature
    assert state.meta["task_examples"] == 16
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 8, 1, steps=4),
        train_dataset=task_b,
        data_collator=pad_collator,
        states=[state],
        strength=Strength(budget=1e-3),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kfc_penalty" in h]
    assert len(logs) == 4
    assert logs[-1]["kfc_lam/A"] > 0  # the budget was exceeded, so λ rose
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_states_round_trip_beside_save_pretrained(tmp_path):
    model = classifier()
    state = kfc_state(model)
    model.save_pretrained(tmp_path)
    hf.save_states(tmp_path, [state])
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    (loaded,) = hf.load_states(tmp_path, again)
    assert loaded.task == "X"
    assert set(loaded.anchor) == set(state.anchor)
    with pytest.raises(ValueError, match="already holds consolidation states"):
        hf.save_states(tmp_path, [state])
    other = transformers.BertForSequenceClassification(bert_config(num_labels=4))
    with pytest.raises(ValueError, match="does not match the model"):
        hf.load_states(tmp_path, other)


def test_a_token_task_budget_is_per_labelled_token(tmp_path):
    """½ΔᵀFΔ predicts an example's summed loss (K9): ε per term is ε·T/N per example."""
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(bert_config())
    state = hf.consolidate(
        model, token_rows(8, seed=0), data_collator=pad_collator, task="A"
    )
    terms, examples = state.meta["loss_terms"], state.meta["task_examples"]
    assert terms > 2 * examples  # several labelled tokens a row
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 4, 1, steps=2),
        train_dataset=token_rows(8, seed=1, offset=19),
        data_collator=pad_collator,
        states=[state],
        strength=Strength(budget=0.01),
    )
    ((penalty, _),) = trainer.kfc_penalties
    assert penalty.budgets == [pytest.approx(0.01 * terms / examples)]
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "kfc_rise/A" in h][-1:]
    assert log["kfc_rise/A"] == pytest.approx(penalty.rises[0] * examples / terms)


def test_l2_states_need_a_lambda_and_a_budget_rate_must_be_positive(tmp_path):
    model = classifier()
    l2 = hf.consolidate(
        model,
        sequence_rows(4, seed=3),
        data_collator=pad_collator,
        task="X",
        method="l2",
    )
    with pytest.raises(
        ValueError, match=r"l2 states have no curvature .*Strength\(lam"
    ):
        hf.KFCTrainer(model=model, args=training_args(tmp_path, 8, 1), states=[l2])
    with pytest.raises(ValueError, match=r"budget_rate must be in \(0, 100\]"):
        hf.KFCTrainer(
            model=model, args=training_args(tmp_path, 8, 1), states=[kfc_state(model)],
            strength=Strength(budget_rate=0.0),
        )  # fmt: skip


def test_a_budget_trains_on_a_dataset_without_a_length(tmp_path):
    """An ``IterableDataset`` has no epochs: the dual step spreads over ``max_steps``."""
    rows = sequence_rows(16, seed=1, offset=19)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(rows)

    model = classifier()
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 4, 1, steps=3),
        train_dataset=Stream(),
        data_collator=pad_collator,
        states=[kfc_state(model)],
        strength=Strength(budget_rate=0.3),
    )
    trainer.train()
    ((penalty, _),) = trainer.kfc_penalties
    assert penalty.rate == pytest.approx(0.3 / 3)


def test_states_may_be_a_model_directory_and_anything_else_is_refused(tmp_path):
    model = classifier()
    state = kfc_state(model)
    hf.save_states(tmp_path / "m", [state])
    trainer = hf.KFCTrainer(
        model=model,
        args=training_args(tmp_path, 8, 1),
        states=str(tmp_path / "m"),
        strength=Strength(lam=1.0),
    )
    assert [s.task for s in trainer.kfc_states] == ["X"]
    with pytest.raises(ValueError, match="empty holds no consolidation states"):
        hf.KFCTrainer(
            model=model, args=training_args(tmp_path, 8, 1), states=tmp_path / "empty"
        )
    with pytest.raises(
        ValueError, match="a sequence of TaskState or a model directory"
    ):
        hf.KFCTrainer(model=model, args=training_args(tmp_path, 8, 1), states=state)


def test_a_state_that_leaves_trainable_layers_uncovered_is_named(tmp_path):
    """Layer 2 of a 3-layer model trains unpenalized: a warning, or refused if strict."""
    torch.manual_seed(0)
    small = transformers.BertForSequenceClassification(bert_config())
    big = transformers.BertForSequenceClassification(bert_config(num_hidden_layers=3))
    state = kfc_state(small)
    args = training_args(tmp_path, 8, 1)
    one = Strength(lam=1.0)
    with pytest.warns(UserWarning, match=r"KFCCallback: .* bert\.encoder\.layer\.2\."):
        hf.KFCTrainer(model=big, args=args, states=[state], strength=one)
    with pytest.raises(ValueError, match=r"layers bert\.encoder\.layer\.2\."):
        hf.KFCTrainer(model=big, args=args, states=[state], strength=one, strict=True)
