"""rundir: a run directory's config check and its environment and stage records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _experiments_synth import tiny_config, write_tasks

from kfacel.experiments.config import ConfigError
from kfacel.experiments.rundir import (
    TASKS_FILE,
    check_tasks,
    open_run_dir,
    record_stage,
    record_tasks,
)

PATHS = {"a": Path("tasks/a"), "b": Path("tasks/b")}  # never read here


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_a_new_run_directory_gets_its_config_and_one_session(tmp_path) -> None:
    cfg = tiny_config(PATHS)
    open_run_dir(tmp_path / "run", cfg, jobs=2)
    assert _read(tmp_path / "run" / "config.json") == cfg.to_dict()
    (session,) = _read(tmp_path / "run" / "env.json")["sessions"]
    assert session["jobs"] == 2
    assert session["tiers"] == [1, 2]
    assert session["packages"]["torch"]  # an installed version, read not assumed
    assert session["device"] == "cpu"


def test_reopening_appends_a_session_and_may_change_only_the_tiers(tmp_path) -> None:
    run = tmp_path / "run"
    open_run_dir(run, tiny_config(PATHS, tiers=[1]), jobs=1)
    open_run_dir(run, tiny_config(PATHS, tiers=[1, 2]), jobs=1)
    sessions = _read(run / "env.json")["sessions"]
    assert [s["tiers"] for s in sessions] == [[1], [1, 2]]


def test_a_config_written_before_a_defaulted_key_existed_still_matches(
    tmp_path,
) -> None:
    run = tmp_path / "run"
    open_run_dir(run, tiny_config(PATHS), jobs=1)
    written = _read(run / "config.json")
    del written["train"]["schedule"], written["train"]["warmup"]  # an older version
    (run / "config.json").write_text(json.dumps(written), encoding="utf-8")
    open_run_dir(run, tiny_config(PATHS), jobs=1)
    assert len(_read(run / "env.json")["sessions"]) == 2


def test_another_config_is_refused_naming_the_key_and_nothing_changes(
    tmp_path,
) -> None:
    run = tmp_path / "run"
    open_run_dir(run, tiny_config(PATHS), jobs=1)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ConfigError, match="lam_grid"):
        open_run_dir(run, tiny_config(PATHS, lam_grid=[1.0]), jobs=1)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_directory_that_is_not_a_run_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a run directory"):
        open_run_dir(tmp_path, tiny_config(PATHS), jobs=1)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_stages_are_recorded_in_the_latest_session_only(tmp_path) -> None:
    run = tmp_path / "run"
    open_run_dir(run, tiny_config(PATHS), jobs=1)
    record_stage(run, "tier 1", 12.34, cells_run=3)
    open_run_dir(run, tiny_config(PATHS), jobs=1)
    record_stage(run, "tier 2", 5.0, cells_run=0)
    first, second = _read(run / "env.json")["sessions"]
    assert first["stages"] == [{"stage": "tier 1", "seconds": 12.3, "cells_run": 3}]
    assert second["stages"] == [{"stage": "tier 2", "seconds": 5.0, "cells_run": 0}]


def test_a_task_changed_since_the_run_started_is_refused_naming_it(tmp_path) -> None:
    """The fingerprints recorded at the start against a task re-prepared since."""
    paths = write_tasks(tmp_path / "tasks")
    run, cfg = tmp_path / "run", tiny_config(paths)
    fingerprints = check_tasks(run, cfg)  # a new run: nothing to compare
    open_run_dir(run, cfg, jobs=1)
    record_tasks(run, fingerprints)
    recorded = _read(run / TASKS_FILE)
    assert set(recorded) == {"a", "b"}
    assert set(recorded["b"]) == {"task.json", "train.jsonl", "dev.jsonl", "test.jsonl"}
    assert check_tasks(run, cfg) == recorded  # unchanged: resumes
    (paths["b"] / "test.jsonl").write_bytes(b"")  # re-prepared: another test split
    with pytest.raises(ConfigError, match=r"task 'b' .* \(test.jsonl differ\)"):
        check_tasks(run, cfg)
    (paths["a"] / "task.json").unlink()
    with pytest.raises(ConfigError, match=r"task 'a' .* \(task.json differ\)"):
        check_tasks(run, cfg)
