"""The quickstart runner on two tiny synthetic tasks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kfacel.experiments.quickstart import (
    SMALL_FORGETTING,
    QuickstartResult,
    _reductions,
    format_table,
    run_quickstart,
    write_report,
)
from kfacel.penalties.strength import DEFAULT_BUDGET, DEFAULT_KFAC_DAMPING


def _two_tasks() -> list:
    from pathlib import Path

    from tests._synth import TASK_A, TASK_B, code_task

    from kfacel.tasks.directory import Task

    return [
        Task(
            n,
            Path(n),
            code_task(n, w, 48, s),
            code_task(n, w, 16, s + 1),
            code_task(n, w, 24, s + 2),
            {},
        )
        for n, w, s in (("A", TASK_A, 0), ("B", TASK_B, 10))
    ]


def test_runs_the_methods_and_writes_the_report(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    tasks = _two_tasks()
    monkeypatch.setattr(
        "kfacel.experiments.quickstart.new_linker",
        _tiny_linker,
    )
    lines: list[str] = []
    result = run_quickstart(
        tasks, epochs=1, lams={"ewc": 10.0}, seeds=1, log=lines.append
    )
    assert set(result.matrices) == {"none", "ewc", "kfac"}
    for matrix in result.matrices.values():
        assert math.isnan(matrix[0][1])
        assert not math.isnan(matrix[1][0])
    a_none = result.matrices["none"][1][0]
    expected = 100 * (a_none - result.individual["A"]) / result.individual["A"]
    assert math.isclose(result.perc_delta["none"]["A"], expected)
    table = format_table(result)
    assert "| ewc | λ = 10 |" in table
    damping = f"δ = {DEFAULT_KFAC_DAMPING:g} factored"
    default = f"| kfac | ε = {DEFAULT_BUDGET:g}, {damping} (default) |"
    assert default in table  # no λ given: the product's rule
    rule = "Strength rule: none: no penalty; ewc: a fixed λ = 10; kfac: the default "
    assert rule + "forgetting budget" in table
    assert f"≤ ε = {DEFAULT_BUDGET:g} nats)." in table
    import kfacel.experiments.figures as figures

    seen = []
    original = figures.plot_accuracy_matrix
    monkeypatch.setattr(
        figures, "plot_accuracy_matrix", lambda m, *a: seen.append(m) or original(m, *a)
    )
    files = write_report(result, tmp_path / "report")
    # the figure takes percent, not fractions
    assert all(np.nanmax(m) > 1 for m in seen)
    assert {f.name for f in files} >= {
        "report.md",
        "results.json",
        "figure1_toy.png",
        "accuracy_matrix_kfac.png",
        "accuracy_matrix_none.csv",
    }
    data = json.loads((tmp_path / "report" / "results.json").read_text())
    assert data["tasks"] == ["A", "B"]
    assert len(lines) == 2 + 3


def _tiny_linker(model, train, **kwargs):
    from kfacel.linking.linker import new_linker

    return new_linker(
        model,
        train,
        hidden=16,
        types=False,
        features=False,
        freeze_embeddings=False,
        embed_dim=16,
        max_mention_length=16,
        max_name_length=4,
        seed=kwargs.get("seed", 0),
    )


def test_table_reports_tasks_left_out() -> None:
    result = QuickstartResult(
        ("A", "B"),
        {"A": 0.5, "B": 0.5},
        {"none": [[0.5, math.nan], [0.6, 0.5]]},
        {"none": {"A": 20.0, "B": 0.0}},
        {},
        {"none": "–"},
        ("A",),
        seeds=(3, 4),
        rules={"none": "no penalty", "ewc": "the budget", "kfac": "the budget"},
    )
    table = format_table(result)
    assert "Strength rule: none: no penalty; ewc, kfac: the budget." in table
    assert f"barely forgot them, Perc Δ above −{SMALL_FORGETTING:g}%): A." in table
    assert "means over seeds 3, 4" in table


def test_the_reduction_is_pooled_over_the_tasks_plain_fine_tuning_forgot() -> None:
    deltas = {
        "none": {"A": -10.0, "B": -2.0, "C": -0.5 * SMALL_FORGETTING, "D": 0.0},
        "kfac": {"A": -5.0, "B": -2.0, "C": -3.0, "D": 0.0},
    }
    reductions, left_out = _reductions(deltas, ("A", "B", "C"))
    # 1 − (5 + 2) / (10 + 2), not the mean of the ratios (50% and 0%: 25%)
    assert reductions["kfac"] == pytest.approx(100 * (1 - 7 / 12))
    assert left_out == ("C",)  # barely forgotten; D is the last task, never counted
    reductions, left_out = _reductions(deltas, ("C",))
    assert math.isnan(reductions["kfac"])
    assert left_out == ("C",)


def test_accuracies_are_means_over_the_seeds(monkeypatch) -> None:
    from pathlib import Path

    from kfacel.tasks.directory import Task

    tasks = [Task(n, Path(n), [], [], [], {}) for n in ("A", "B")]
    nan = math.nan
    per_seed = {  # seed -> (individual, matrices)
        5: ({"A": 0.8, "B": 0.6}, {"none": [[0.8, nan], [0.6, 0.7]]}),
        6: ({"A": 0.6, "B": 0.8}, {"none": [[0.6, nan], [0.4, 0.9]]}),
    }
    seen = []

    def one_seed(tasks, methods, lams, settings, *args):
        seen.append(settings.seed)
        return per_seed[settings.seed]

    monkeypatch.setattr("kfacel.experiments.quickstart._one_seed", one_seed)
    result = run_quickstart(tasks, methods=("none",), seed=5, seeds=2)
    assert seen == [5, 6]
    assert result.seeds == (5, 6)
    assert result.individual == pytest.approx({"A": 0.7, "B": 0.7})
    assert result.matrices["none"][1] == pytest.approx([0.5, 0.8])
    assert math.isnan(result.matrices["none"][0][1])
    assert result.perc_delta["none"]["A"] == pytest.approx(100 * (0.5 - 0.7) / 0.7)
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        run_quickstart(tasks, seeds=0)


def test_seeds_in_processes_give_the_numbers_of_one_process() -> None:
    """jobs=2 (two spawned workers, one thread each) against jobs=1 (here, one thread)."""
    torch.set_num_threads(1)
    settings = {"methods": ("none", "kfac"), "lams": {"kfac": 10.0}, "epochs": 1}
    settings |= {"hidden": 8, "seeds": 2}
    lines: list[str] = []
    here = run_quickstart(_two_tasks(), jobs=1, **settings)
    apart = run_quickstart(_two_tasks(), jobs=2, log=lines.append, **settings)
    np.testing.assert_equal(apart.matrices, here.matrices)  # NaN equals NaN
    assert apart.individual == here.individual
    assert apart.seeds == here.seeds == (0, 1)
    assert any(line.startswith("seed 1: kfac after B") for line in lines)
    assert apart.seconds["kfac"] > 0
