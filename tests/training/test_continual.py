"""update_within_tolerance and ContinualSettings: what each training is given, and what is said."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kfacel.consolidation import TaskState
from kfacel.curvature.factors import DiagonalFisher
from kfacel.penalties.strength import Strength
from kfacel.training import continual
from kfacel.training.continual import ContinualSettings, update_within_tolerance
from kfacel.training.trainer import Replay, TrainLog
from kfacel.types import FisherKind


def _state(task: str = "A") -> TaskState:
    anchor = {"w": torch.zeros(2)}
    fisher = DiagonalFisher({"w": torch.ones(2)}, FisherKind.EMPIRICAL, 4)
    return TaskState(task, "ewc", anchor, fisher, {})


@pytest.fixture
def trainings(monkeypatch):
    """Record each training's (settings, states) instead of training."""
    seen: list[tuple[ContinualSettings, tuple]] = []

    def fake_update(linker, task, states, settings, given, *, progress=False):
        seen.append((given, tuple(states)))
        linker.meta["continual"] = {}
        accuracy = 0.9 if given.penalty == "none" else 0.89  # 1 point below
        return TrainLog(best_dev_accuracy=accuracy)

    monkeypatch.setattr(continual, "update_linker", fake_update)
    return seen


def test_the_tolerance_reference_is_plain_fine_tuning_without_lrc_or_replay(
    trainings,
):
    replay = Replay(["old query"], every=2, n=1)
    given = ContinualSettings(penalty="kfac", lrc=0.5, replay=replay)
    linker = SimpleNamespace(meta={})
    states = (_state(),)
    _, _, search = update_within_tolerance(
        linker, None, states, None, given, tolerance=2.0, grid=(1.0, 10.0)
    )
    (plain, plain_states), *searched = trainings
    assert (plain.penalty, plain.lrc, plain.replay, plain_states) == (
        "none",
        None,
        None,
        (),
    )
    assert [p.strength.lam for p, _ in searched] == [1.0, 10.0]
    for p, s in searched:  # the settings searched keep what the user asked for
        assert (p.penalty, p.lrc, p.replay, p.strength.budget, s) == (
            "kfac",
            0.5,
            replay,
            None,
            states,
        )
    assert search.chosen == 10.0


def test_a_tolerance_without_a_penalty_is_refused_before_training(trainings):
    with pytest.raises(ValueError, match="no strength to search"):
        update_within_tolerance(
            SimpleNamespace(meta={}), None, (_state(),), None, ContinualSettings(),
            tolerance=2.0,
        )  # fmt: skip
    assert trainings == []


@pytest.mark.parametrize(
    ("given", "tolerance", "line"),
    [
        (
            {"penalty": "ewc", "strength": Strength(budget_rate=13.0)},
            None,
            "protecting 2 tasks (A, B) with ewc, budget ε=0.005 nats, "
            "rate 13 per run, damping δ=0",
        ),
        (
            {
                "penalty": "kfac",
                "strength": Strength(lam_per_task={"A": 10.0, "B": 100.0}),
                "lrc": 0.5,
            },
            None,
            "protecting 2 tasks (A, B) with kfac, λ A=10, B=100, damping factored "
            "δ=1e-06, LRC γ=0.5",
        ),
        (
            {"penalty": "l2"},
            2.0,
            "protecting 2 tasks (A, B) with l2, the largest λ of 1…10000 within 2 "
            "points of plain fine-tuning's new-task dev accuracy",
        ),
        ({}, None, "no penalty: plain fine-tuning"),
    ],
)
def test_the_strength_rule_in_effect_is_described_in_one_line(given, tolerance, line):
    assert ContinualSettings(**given).describe(["A", "B"], tolerance=tolerance) == line


@pytest.mark.parametrize("epochs", [1, 3, 10])
def test_an_update_spreads_the_budget_rate_over_all_its_epochs(monkeypatch, epochs):
    """The dual rate is per run: the per-step rate falls as the epochs grow."""
    from kfacel.penalties.strength import DEFAULT_BUDGET_RATE
    from kfacel.training.trainer import TrainSettings

    seen = []
    monkeypatch.setattr(
        continual, "fit_task", lambda *a, penalty, **k: seen.append(penalty)
    )
    task = SimpleNamespace(name="C", train=[object()] * 40)
    linker = SimpleNamespace(meta={}, model=None)
    settings = TrainSettings(epochs=epochs, batch_size=8)  # 5 steps an epoch
    continual.update_linker(
        linker, task, [_state()], settings, ContinualSettings(penalty="ewc")
    )
    (penalty,) = seen
    assert penalty.rate == DEFAULT_BUDGET_RATE / epochs / 5
