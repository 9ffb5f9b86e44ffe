"""The runner on two tiny tasks: run directory, resume, failed cells, config errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from _experiments_synth import CODES, code_examples, tiny_config, write_tasks

from kfacel._lock import write_lock
from kfacel.data.records import Concept
from kfacel.experiments import run_cell as cells_mod
from kfacel.experiments.config import ConfigError, apply_overrides, load_config
from kfacel.experiments.report import write_report
from kfacel.experiments.runner import run_experiment
from kfacel.tasks.directory import SPLITS, load_task, write_task
from kfacel.types import NonFiniteCurvatureError


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def finished_run(paths, tmp_path_factory):
    """Tiers 1–2, none and KFC with one λ that trains and one whose loss overflows.

    The largest λ a config accepts (1e15) does not overflow on this tiny task, so its
    cells' training raises the trainer's FloatingPointError here (the trainer's own
    test checks that a non-finite loss raises it).
    """
    torch.set_num_threads(1)
    cfg = tiny_config(
        paths, methods=["none", "lrc", "replay", "kfac"], lam_grid=[10.0, 1e15]
    )
    out = tmp_path_factory.mktemp("runs") / "run"
    real = cells_mod.update_linker

    def overflowing(linker, task, states, settings, continual, **kw):
        if continual.strength.lam == 1e15:
            raise FloatingPointError("loss is nan at epoch 1, batch 1: lower λ")
        return real(linker, task, states, settings, continual, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cells_mod, "update_linker", overflowing)
        summary = run_experiment(cfg, out)
    return cfg, out, summary


def test_run_directory_holds_config_env_metrics_and_cells(finished_run) -> None:
    cfg, out, _summary = finished_run
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    env = json.loads((out / "env.json").read_text())["sessions"][0]
    assert env["packages"]["torch"]
    assert env["device"] == "cpu"
    assert env["seeds"] == [0]
    stages = {x["stage"]: x for x in env["stages"]}
    assert [x["stage"] for x in env["stages"]] == ["tier1", "consolidate", "tier2"]
    assert stages["tier1"]["cells_run"] == 3  # a, b alone and combined
    assert all(x["seconds"] >= 0 for x in env["stages"])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {
        "tier",
        "order",
        "method",
        "lam",
        "seed",
        "split",
        "task",
        "accuracy",
        "mrr",
    }
    assert all(keys <= set(r) for r in records)
    # tier 1: a, b alone (own task) and combined (both), dev and test each
    assert sum(r["tier"] == 1 for r in records) == 2 * 2 + 2 * 2
    # tier 2: 2 orders x (none, lrc, replay, kfac λ=10) x 2 tasks x 2 splits
    assert sum(r["tier"] == 2 for r in records) == 2 * 4 * 2 * 2
    assert all(0 <= r["accuracy"] <= 100 for r in records)
    ids = {p.name for p in (out / "cells").iterdir()}
    assert {
        "individual-a-none-s0",
        "combined-a-b-none-s0",
        "consolidate-a-kfac-s0",
    } <= ids
    assert all((out / "cells" / i / "done.json").is_file() for i in ids)
    # checkpoints of tier-1 individual models only (tier 3 was not asked for)
    models = sorted(p.parent.name for p in (out / "cells").glob("*/model"))
    assert models == ["individual-a-none-s0", "individual-b-none-s0"]


def test_overflowing_lambda_fails_its_cell_not_the_run(finished_run) -> None:
    _, out, summary = finished_run
    failed = dict(summary.failed)
    assert set(failed) == {"tier2-a-b-kfac-1e+15-s0", "tier2-b-a-kfac-1e+15-s0"}
    assert all("FloatingPointError" in m for m in failed.values())
    done = json.loads(
        (out / "cells" / "tier2-a-b-kfac-1e+15-s0" / "done.json").read_text()
    )
    assert done["status"] == "failed"
    assert done["records"] == []
    selection = json.loads((out / "selection.json").read_text())
    chosen = {(tuple(c["order"]), c["method"]): c["lam"] for c in selection["tier2"]}
    assert chosen[(("a", "b"), "kfac")] == 10.0  # the failed λ is never chosen
    assert "plain fine-tuning" in selection["rule"]  # how λ was chosen


def test_non_finite_fisher_fails_its_consolidation_and_dependents_only(
    paths, tmp_path, monkeypatch
) -> None:
    """A NaN Fisher fails its consolidation and the cells that need its state.

    Plain fine-tuning and the other order of the same run still run.
    """
    real = cells_mod.consolidate_task

    def nan_for_a(linker, task, **kw):
        if task.name == "a":
            raise NonFiniteCurvatureError(
                "layer 'scorer.out': the G factor is not finite"
            )
        return real(linker, task, **kw)

    monkeypatch.setattr(cells_mod, "consolidate_task", nan_for_a)
    cfg = tiny_config(paths, methods=["none", "kfac"], lam_grid=[10.0])
    summary = run_experiment(cfg, tmp_path / "run")
    failed = dict(summary.failed)
    assert set(failed) == {"consolidate-a-kfac-s0", "tier2-a-b-kfac-10-s0"}
    assert "G factor is not finite" in failed["consolidate-a-kfac-s0"]
    assert "consolidate-a-kfac-s0 did not finish" in failed["tier2-a-b-kfac-10-s0"]
    assert {"tier2-a-b-none-s0", "tier2-b-a-kfac-10-s0"} <= set(summary.ran)
    # what the tables lack is named, with why, in the summary, selection.json, report
    line = "tier 2 a→b kfac: no finished cell (failed, or not run yet)"
    assert summary.left_out == [line]
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert selection["left_out"] == [line]
    write_report(tmp_path / "run", figures=False)
    assert f"- {line}\n" in (tmp_path / "run" / "report" / "report.md").read_text()


def test_curvature_approx_reaches_consolidate_task(paths, monkeypatch) -> None:
    """``[curvature] approx`` is passed to ``consolidate_task`` by ``cells._state``."""
    seen: dict = {}
    monkeypatch.setattr(
        cells_mod, "consolidate_task", lambda linker, task, **kw: seen.update(kw)
    )
    cfg = tiny_config(paths, methods=["none", "kfac"], lam_grid=[10.0])
    cfg = apply_overrides(cfg, ["curvature.approx=reduce"])
    cells_mod._state(None, None, "kfac", cfg, 0)  # type: ignore[arg-type]
    assert seen["approx"] == "reduce"


def test_report_writes_every_table(finished_run, tmp_path) -> None:
    _, out, _ = finished_run
    written = write_report(out)
    names = {p.name for p in written}
    for table in ("table1", "table2", "table3", "table6", "forgetting_reduction"):
        assert f"{table}.csv" in names, names
    text = (out / "report" / "report.md").read_text()
    assert "Table 2" in text
    assert "Table 3" in text
    assert "tier2-a-b-kfac-1e+15-s0: FloatingPointError" in text
    assert "lambda_tradeoff.png" in names
    assert "cores, jobs 1: tier1" in text  # the wall time of each stage


def test_resume_skips_finished_cells(finished_run, monkeypatch) -> None:
    cfg, out, _ = finished_run
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/done.json")}
    calls = []
    monkeypatch.setattr(cells_mod, "fit_task", lambda *a, **k: calls.append(a))
    summary = run_experiment(cfg, out)
    assert calls == []
    assert summary.ran == []
    assert len(summary.skipped) == len(before)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert len(json.loads((out / "env.json").read_text())["sessions"]) == 2


def test_interrupted_cell_is_redone(paths, tmp_path) -> None:
    cfg = tiny_config(paths, tiers=[1], methods=["none"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    cell = out / "cells" / "individual-b-none-s0"
    (cell / "done.json").unlink()  # as if killed before it finished
    (cell / "half-written").write_text("x")
    summary = run_experiment(cfg, out)
    assert summary.ran == ["individual-b-none-s0"]
    assert not (cell / "half-written").exists()
    assert (cell / "done.json").is_file()


def test_a_task_re_prepared_since_the_run_started_is_refused_untouched(
    tmp_path,
) -> None:
    paths = write_tasks(tmp_path / "tasks")
    cfg = tiny_config(paths, tiers=[1], methods=["none"], combined=False)
    out = tmp_path / "run"
    run_experiment(cfg, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    splits = {s: code_examples("b", range(8, 16), 16, 99) for s in SPLITS}
    write_task(paths["b"], splits, {"name": "b", "seed": 99})  # a new seed
    with pytest.raises(ConfigError, match=r"task 'b'.*changed since the run started"):
        run_experiment(cfg, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_other_config_in_run_dir_is_refused_untouched(finished_run) -> None:
    cfg, out, _ = finished_run
    config_before = (out / "config.json").read_bytes()
    other = replace(cfg, train=replace(cfg.train, lr=1.0))
    with pytest.raises(ConfigError, match="another config"):
        run_experiment(other, out)
    assert (out / "config.json").read_bytes() == config_before


def test_unreadable_task_fails_before_writing(paths, tmp_path) -> None:
    cfg = tiny_config({**paths, "c": tmp_path / "missing"})
    with pytest.raises(ConfigError, match="missing"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_second_invocation_on_one_run_directory_is_refused(paths, tmp_path) -> None:
    run = tmp_path / "run"
    with (
        write_lock(run, "experiment"),
        pytest.raises(ValueError, match="being written"),
    ):
        run_experiment(tiny_config(paths), run)
    assert not run.exists()


def test_three_tasks_through_tier3_keep_only_chosen_models(tmp_path) -> None:
    paths = write_tasks(tmp_path / "tasks", ("a", "b", "c"))
    cfg = tiny_config(
        paths,
        tiers=[1, 2, 3],
        methods=["kfac"],
        lam_grid=[10.0, 1e3],
        penalty={"tier3_factors": [1.0]},
    )
    out = tmp_path / "run"
    summary = run_experiment(cfg, out)
    assert summary.failed == []
    assert summary.left_out == []
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tier3 = [r for r in records if r["tier"] == 3]
    assert len(tier3) == 6 * 3 * 2  # orders x tasks x splits
    kfac3 = {tuple(r["order"]): r["lam"] for r in tier3 if r["method"] == "kfac"}
    chosen = json.loads((out / "selection.json").read_text())["tier2"]
    lam2 = {tuple(c["order"]): c["lam"] for c in chosen if c["method"] == "kfac"}
    for order, lam in kfac3.items():
        assert lam[0] == lam2[order[:2]]  # tier 3 keeps the tier-2 optimum of A
    # the models kept: tier-1 ones and the chosen tier-2 ones, nothing else
    kept = {p.parent.name for p in (out / "cells").glob("tier2-*/model")}
    assert len(kept) == 6
    assert all(f"-kfac-{lam2[tuple(k.split('-')[1:3])]:.3g}-" in k for k in kept)
    # a chosen tier-2 model that is gone is retrained, deterministically
    t2 = sorted(kept)[0]
    a, b, lam = t2.split("-")[1], t2.split("-")[2], lam2[tuple(t2.split("-")[1:3])]
    shutil.rmtree(out / "cells" / t2 / "model")
    shutil.rmtree(out / "cells" / f"resume-{a}-{b}-kfac-{lam:.3g}-s0")
    again = run_experiment(cfg, out)
    assert again.ran == [f"resume-{a}-{b}-kfac-{lam:.3g}-s0"]
    done = json.loads((out / "cells" / again.ran[0] / "done.json").read_text())
    assert done["retrained"] is True
    before = {
        (r["task"], r["split"]): r["accuracy"] for r in records if r["cell"] == t2
    }
    after = {(r["task"], r["split"]): r["accuracy"] for r in done["retrained_records"]}
    assert after == before
    written = {p.name for p in write_report(out, figures=False)}
    assert {"table3.csv", "table4.csv", "table6.csv"} <= written


@pytest.mark.slow
def test_parallel_jobs_give_the_same_records(paths, tmp_path) -> None:
    cfg = tiny_config(paths, tiers=[1], methods=["none"])
    run_experiment(cfg, tmp_path / "one")
    run_experiment(cfg, tmp_path / "two", jobs=2)
    one, two = ((tmp_path / d / "metrics.jsonl").read_text() for d in ("one", "two"))
    assert one == two


def test_config_with_an_unknown_key_fails_cleanly(paths, tmp_path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(
        'name = "bad"\nlam_grid = [10.0]\n[[tasks]]\nname = "a"\n'
        f'path = "{paths["a"]}"\n[train]\nepochz = 2\n'
    )
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key 'train\.epochz'"):
        load_config(toml)
    assert not (tmp_path / "runs").exists()


def test_a_task_named_otherwise_in_its_task_json_is_refused_up_front(
    paths, tmp_path
) -> None:
    # the records were keyed by task.json's name: the tables came out empty, "0 failed"
    cfg = tiny_config({"x": paths["a"], "b": paths["b"]})
    with pytest.raises(ConfigError, match=r"config task 'x' is named 'a'"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_written_with_retired_keys_still_resumes(finished_run) -> None:
    cfg, out, _ = finished_run
    before = (out / "config.json").read_bytes()
    raw = json.loads(before)
    raw["curvature"]["method"], raw["penalty"]["lam"] = (
        "kfac",
        1000.0,
    )  # as written before
    (out / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    try:
        assert run_experiment(cfg, out).ran == []
    finally:
        (out / "config.json").write_bytes(before)


def test_budgeted_methods_run_beside_the_lambda_grid_and_report(
    paths, tmp_path
) -> None:
    cfg = tiny_config(
        paths, methods=["none", "kfac", "kfac-budget"], budget_grid=[0.01, 1.0]
    )
    summary = run_experiment(cfg, tmp_path / "run")
    assert not summary.failed
    cells = {p.name for p in (tmp_path / "run" / "cells").iterdir()}
    # the budgeted cells share KFC's consolidation: no state of their own
    assert not any(c.startswith("consolidate") and "budget" in c for c in cells)
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    budgeted = {r["lam"] for r in records if r["method"] == "kfac-budget"}
    assert budgeted == {0.01, 1.0}
    assert all("loss" in r for r in records)
    done = json.loads(
        next(
            (tmp_path / "run" / "cells").glob("tier2-a-b-kfac-budget*/done.json")
        ).read_text()
    )
    assert set(done["predicted_rise"]) == {"a"}
    written = {p.name for p in write_report(tmp_path / "run")}
    assert {"calibration.csv", "calibration.png"} <= written
    rows = (tmp_path / "run" / "report" / "calibration.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["kfac", "2"], ["kfac-budget", "4"]]


def test_a_worker_exits_when_its_runner_is_killed(tmp_path) -> None:
    """A stopped run leaves no worker behind: kill the runner, its worker ends too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    worker = (
        "import os, time\n"
        "from kfacel.experiments.run_cell import exit_with_parent\n"
        "import threading\n"
        "threading.Thread(target=exit_with_parent, args=(os.getppid(), 0.05),"
        " daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    runner = (
        "import subprocess, sys\n"
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=sys.stdout)\n"
        "print(w.pid, flush=True)\n"
        "w.wait()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    worker_pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"  # its watchdog is running
    proc.send_signal(signal.SIGKILL)  # no cleanup in the runner at all
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return  # the worker is gone
        if _is_zombie(worker_pid):
            return  # it exited; init has not reaped it yet
        time.sleep(0.05)
    os.kill(worker_pid, signal.SIGKILL)
    raise AssertionError("the worker outlived its runner")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


def test_the_transformer_ranker_runs_the_protocol_with_budgets(paths, tmp_path) -> None:
    """The transformer config in small: a tiny BERT through tiers 1–2.

    None, LRC and both budgeted penalties under factored damping, as
    `paper-transformer-small.toml` runs them.
    """
    from _experiments_synth import CODES
    from tests._synth import WORDS, write_tiny_encoder

    encoder = write_tiny_encoder(tmp_path / "bert", [*WORDS, *CODES])
    cfg = tiny_config(
        paths,
        model={"name": "transformer", "encoder_path": str(encoder), "layers": 1},
        methods=["none", "lrc", "ewc-budget", "kfac-budget"],
        budget_grid=[0.01],
        curvature={"damping": 1e-6, "damping_kind": "factored", "max_examples": 24},
    )
    summary = run_experiment(cfg, tmp_path / "run")
    assert not summary.failed
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    tier2 = {(r["method"], tuple(r["order"])) for r in records if r["tier"] == 2}
    methods = ("none", "lrc", "ewc-budget", "kfac-budget")
    assert tier2 == {(m, o) for m in methods for o in (("a", "b"), ("b", "a"))}
    kfac_state = next((tmp_path / "run" / "cells").glob("consolidate-a-kfac*"))
    assert json.loads((kfac_state / "done.json").read_text())["message"] is None


def test_combined_false_leaves_the_combined_cell_out(paths, tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = replace(tiny_config(paths, methods=["none"], lam_grid=[10.0]), tiers=(1,))
    run_experiment(replace(cfg, combined=False), tmp_path / "run")
    ids = {p.name for p in (tmp_path / "run" / "cells").iterdir()}
    assert ids == {"individual-a-none-s0", "individual-b-none-s0"}


def test_a_tier2_cell_records_the_drift_probe_of_its_old_task(
    paths, tmp_path, monkeypatch
) -> None:
    """The old task's dictionary gives ``drift`` beside the quadratic's rise."""
    old = load_task(paths["a"])
    concepts = [Concept(f"C{x}", (CODES[x],)) for x in range(len(CODES))]
    splits = {s: old.split(s) for s in SPLITS}
    info = {"name": "a", "candidates": {"method": "tfidf", "num_candidates": 4}}
    with_dictionary = {"a": write_task(tmp_path / "a", splits, info, concepts=concepts)}
    monkeypatch.setattr(cells_mod, "DRIFT_QUERIES", 12)
    cfg = tiny_config(
        {**with_dictionary, "b": paths["b"]}, methods=["none"], pairs=["a>b"]
    )
    assert not run_experiment(cfg, tmp_path / "run").failed
    (cell,) = (tmp_path / "run" / "cells").glob("tier2-a-b-*/done.json")
    drift = json.loads(cell.read_text())["drift"]
    assert drift["task"] == "a"
    assert drift["n"] == 12
    assert drift["drop"] == pytest.approx(drift["accuracy_old"] - drift["accuracy_new"])
