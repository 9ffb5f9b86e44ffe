"""A config's missing PUBLIC-3 tasks are built from ``benchmark_data`` before the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from _experiments_synth import SPANS, code_examples, tiny_config, write_tasks

from kfacel.experiments.config import ConfigError
from kfacel.experiments.runner import run_experiment
from kfacel.tasks.directory import write_task


def _fake_build(calls: list) -> object:
    """``build_public3`` writing a synthetic task named like the PUBLIC-3 one asked for."""

    def build(data, out, *, small, tasks, overwrite):
        calls.append((Path(data), Path(out), small, tasks, overwrite))
        for name in tasks:
            splits = {
                split: code_examples("b", SPANS["b"], n, j)
                for j, (split, n) in enumerate(
                    (("train", 48), ("dev", 16), ("test", 16))
                )
            }
            write_task(Path(out) / name, splits, {"name": name})

    return build


def test_a_missing_benchmark_task_is_built_once_then_run(tmp_path, monkeypatch) -> None:
    paths = write_tasks(tmp_path / "tasks", ("a",))
    missing = tmp_path / "tasks" / "ncbi"
    data = tmp_path / "data"
    data.mkdir()
    calls: list = []
    monkeypatch.setattr("kfacel.tasks.benchmark.build_public3", _fake_build(calls))
    cfg = tiny_config(
        {"a": paths["a"], "ncbi": missing},
        benchmark_data=str(data), tiers=[1], methods=["none"], combined=False,
    )  # fmt: skip
    lines: list[str] = []
    summary = run_experiment(cfg, tmp_path / "run", log=lines.append)
    assert calls == [(data, tmp_path / "tasks", True, ("ncbi",), False)]
    want = f"building {missing}: kfacel prepare benchmark --data {data} --out "
    assert lines[0] == want + f"{tmp_path / 'tasks'} --small --task ncbi"
    assert not summary.failed
    assert any("ncbi" in cell for cell in summary.ran)
    again = run_experiment(cfg, tmp_path / "run")  # built: nothing to build or run
    assert len(calls) == 1
    assert not again.ran


def test_a_missing_data_directory_is_named_before_anything_is_written(tmp_path) -> None:
    cfg = tiny_config(
        {"ncbi": tmp_path / "tasks" / "ncbi"},
        benchmark_data=str(tmp_path / "nodata"), tiers=[1], methods=["none"],
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"benchmark_data: .*nodata: no such data"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "tasks").exists()


def test_a_benchmark_task_under_another_directory_name_is_refused(tmp_path) -> None:
    one = {"tiers": [1], "methods": ["none"]}
    with pytest.raises(ConfigError, match="tasks: ncbi would be built as"):
        tiny_config({"ncbi": tmp_path / "disease"}, benchmark_data="data", **one)
    tiny_config({"ncbi": tmp_path / "disease"}, **one)  # no benchmark_data: any path


def test_how_tasks_are_built_does_not_make_a_run_another_config(tmp_path) -> None:
    paths = write_tasks(tmp_path / "tasks", ("a",))
    settings = {"tiers": [1], "methods": ["none"], "combined": False}
    run_experiment(tiny_config(paths, **settings), tmp_path / "run")
    later = tiny_config(paths, benchmark_data="elsewhere", **settings)
    assert not run_experiment(later, tmp_path / "run").ran  # resumed, not refused
