"""The quickstart runner on two tiny synthetic tasks."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from kfacel.experiments.quickstart import (
    QuickstartResult,
    format_table,
    run_quickstart,
    write_report,
)
from kfacel.penalties.strength import DEFAULT_BUDGET, DEFAULT_KFAC_DAMPING


def test_runs_the_methods_and_writes_the_report(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    from pathlib import Path

    from tests._synth import TASK_A, TASK_B, code_task

    from kfacel.tasks.directory import Task

    tasks = [
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
    monkeypatch.setattr(
        "kfacel.experiments.quickstart.new_linker",
        _tiny_linker,
    )
    lines: list[str] = []
    result = run_quickstart(tasks, epochs=1, lams={"ewc": 10.0}, log=lines.append)
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
    )
    assert "did not forget them): A" in format_table(result)
