"""Run one cell of an experiment: load, train or consolidate, evaluate, write its directory.

A cell is the unit of work a run is made of (``sweep.Cell``, planned by ``sweep.py`` and
scheduled by ``runner.py``): one model trained alone or on the combined tasks,
consolidated, or updated on the next task of one order, with one method, λ and seed.

``run_cell`` is the one entry point; it runs in the runner's process (``--jobs 1``)
or in a spawned worker, and takes and returns plain JSON values only. A cell writes into
``cells/<id>/`` and finishes by writing ``done.json`` atomically: its status (``ok`` or
``failed``), the seconds it took, what it trained and the evaluation records that
``metrics.jsonl`` collects. A directory without ``done.json`` is the leftover of an
interrupted cell and is cleared before the cell runs again.

A tier-2 cell also records ``drift``: the drift probe's estimate of the old task's
accuracy drop in points, asked of the start model and the trained one on pseudo-queries
made from the old task's dictionary alone (``training.drift``; absent for a task
without a dictionary file).

A loss that becomes NaN or infinite (``FloatingPointError`` from the trainer, e.g. a λ
far too large) fails the cell, with the message in ``done.json``, not the run.

Records (one per task and split evaluated after the cell's training): ``tier``,
``order`` (task names in training order), ``method``, ``lam`` (None, a number, or one
number per prior task), ``seed``, ``split``, ``task``, ``accuracy`` (percent, 0–100, as
in the paper's tables), ``mrr`` (0–1), ``n`` (queries), ``cell`` and ``kind``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from kfacel._io import atomic_write_json
from kfacel.consolidation import load_state, save_state
from kfacel.data.records import LinkingExample
from kfacel.experiments.config import ExperimentConfig
from kfacel.experiments.sweep import (
    BUDGETED,
    REGULARIZED,
    Cell,
    CellKind,
    state_method,
)
from kfacel.linking.evaluate import evaluate_split
from kfacel.linking.linker import Linker, load_linker, new_linker, save_linker
from kfacel.penalties.make import predicted_rise
from kfacel.penalties.olora import DEFAULT_OLORA_LAM
from kfacel.penalties.strength import Damping, Strength
from kfacel.tasks.directory import Task, load_task
from kfacel.training.consolidate import consolidate_task
from kfacel.training.continual import ContinualSettings, update_linker
from kfacel.training.drift import drift_probe
from kfacel.training.fit import fit_task
from kfacel.training.trainer import Replay, TrainSettings

T = TypeVar("T")

DONE = "done.json"
MODEL = "model"
DRIFT_QUERIES = 500
"""Pseudo-queries of the drift probe a tier-2 cell asks (``training.drift``)."""
_TASKS: dict[str, Task] = {}  # per process: every cell of a worker reads them once


@dataclass(frozen=True)
class CellDeps:
    """What a cell starts from, resolved by the runner (absolute paths).

    Attributes:
        start: the model directory to continue from (consolidate, tier 2 and 3).
        states: directories whose consolidation states penalize, in task order.
        replay: names of the tasks to replay (the replay reference only).
        keep_model: save the trained model into the cell's directory.
        tier2: resume only: the chosen tier-2 cell's directory.
        tier2_cell: resume only: that cell, to retrain it when its model was pruned.
        tier2_deps: resume only: that cell's own dependencies.
    """

    start: str | None = None
    states: tuple[str, ...] = ()
    replay: tuple[str, ...] = ()
    keep_model: bool = False
    tier2: str | None = None
    tier2_cell: Cell | None = None
    tier2_deps: CellDeps | None = None


def read_done(cell_dir: Path) -> dict[str, Any] | None:
    """The ``done.json`` of a finished cell, or None."""
    path = cell_dir / DONE
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def tasks_of(cfg: ExperimentConfig) -> dict[str, Task]:
    """The config's tasks by name, loaded once per process.

    Raises:
        ValueError: a config task whose name differs from its ``task.json``'s.
    """
    out = {}
    for spec in cfg.tasks:
        key = str(Path(spec.path).resolve())
        if key not in _TASKS:
            _TASKS[key] = load_task(spec.path)
        task = _TASKS[key]
        if task.name != spec.name:  # records are keyed by the task's own name
            raise ValueError(
                f"config task {spec.name!r} is named {task.name!r} in "
                f"{spec.path}/task.json: use one name in both"
            )
        out[spec.name] = task
    return out


def init_worker(threads: int, parent: int | None = None) -> None:
    """Worker initializer: CPU threads per worker process; ends with its runner.

    ``parent``: the runner's pid. A watchdog thread ends the worker once the runner is
    gone (killed, say), so that a stopped run leaves no process computing and writing
    cells behind it; the cell in progress has no ``done.json`` and is rerun on resume.
    """
    import torch

    torch.set_num_threads(max(1, threads))
    if parent is not None:
        threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()


def exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Poll until this process's parent is no longer ``parent``, then exit at once."""
    while os.getppid() == parent:
        time.sleep(poll)
    os._exit(1)


def run_cell(
    cell_json: Mapping[str, Any],
    deps: CellDeps,
    config: Mapping[str, Any],
    run_dir: str,
) -> dict[str, Any]:
    """Run one cell and write its directory; returns its ``done.json`` content.

    Args:
        cell_json: ``Cell.to_json()``.
        deps: what the cell starts from, resolved by the runner.
        config: ``ExperimentConfig.to_dict()``.
        run_dir: the run directory.
    """
    cell = Cell.from_json(cell_json)
    cfg = ExperimentConfig.from_dict(config, source=f"{run_dir}/config.json")
    out = Path(run_dir) / "cells" / cell.id
    if out.exists():  # an interrupted attempt: start it over
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    done: dict[str, Any] = {**cell.to_json(), "status": "ok", "message": None}
    try:
        records, extra = _WORK[cell.kind](cell, cfg, tasks_of(cfg), out, deps)
        done |= extra
    except FloatingPointError as exc:
        records = []
        done |= {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
        shutil.rmtree(out / MODEL, ignore_errors=True)
    done |= {"seconds": time.perf_counter() - start, "records": records}
    atomic_write_json(out / DONE, done, sort_keys=True)
    return done


# ----------------------------------------------------------------------------- kinds


def _individual(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: CellDeps
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tier 1: one task from a fresh model; the checkpoint is kept."""
    task = tasks[cell.order[0]]
    linker = _new(cfg, task.train, cell.seed)
    log = fit_task(linker, task, _settings(cfg, cell.seed))
    save_linker(linker, out / MODEL, log=log)
    return _evaluate(linker, cell, cfg, [task]), {"train": _summary(log)}


def _combined(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: CellDeps
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tier 1: all tasks' training queries shuffled together; no checkpoint."""
    parts = [tasks[n] for n in cell.order]
    cap = cfg.train.max_train_examples
    train = [ex for t in parts for ex in (t.train[:cap] if cap else t.train)]
    random.Random(cell.seed).shuffle(train)
    union = Task(
        "combined",
        Path("combined"),
        train,
        [ex for t in parts for ex in t.dev],
        [ex for t in parts for ex in t.test],
        {},
    )
    linker = _new(cfg, train, cell.seed)
    log = fit_task(linker, union, _settings(cfg, cell.seed, capped=False))
    return _evaluate(linker, cell, cfg, parts), {"train": _summary(log)}


def _consolidate(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: CellDeps
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Anchor and curvature of a tier-1 model, shared by every cell that needs it."""
    linker = load_linker(_required(deps.start))
    state = _state(linker, tasks[cell.order[0]], cell.method, cfg, cell.seed)
    save_state(out, state)
    return [], {"examples_used": state.meta.get("examples_used")}


def _continue(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: CellDeps
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tiers 2 and 3: train the start model on the last task of the order."""
    linker = load_linker(_required(deps.start))
    states = [s for d in deps.states for s in load_state(d, linker.model)]
    method = state_method(cell.method) if cell.method in REGULARIZED else "none"
    lam, per_task = None, {}
    if isinstance(cell.lam, tuple):
        per_task = dict(zip([s.task for s in states], cell.lam, strict=True))
    elif cell.lam is not None:
        lam = float(cell.lam)
    if cell.method in BUDGETED:  # the cell's "λ" is the budget ε
        strength = Strength(
            budget=lam, budget_per_task=per_task, budget_rate=cfg.penalty.budget_rate
        )
    else:
        strength = Strength(lam=lam, lam_per_task=per_task)
    cap = cfg.train.max_train_examples
    replay = [ex for n in deps.replay for ex in tasks[n].train[: cap or None]]
    t, c = cfg.train, cfg.curvature
    continual = ContinualSettings(
        penalty=method,
        strength=strength,
        damping=Damping(c.damping, c.damping_kind if method == "kfac" else "uniform"),
        lrc=t.lrc_gamma if cell.method == "lrc" else None,
        replay=Replay(replay, t.replay_every, t.replay_batches) if replay else None,
        olora=DEFAULT_OLORA_LAM if cell.method == "olora" else None,
        ilora=cell.method == "ilora",
    )
    task = tasks[cell.order[-1]]
    settings = _settings(cfg, cell.seed, continual=True)
    log = update_linker(linker, task, states, settings, continual)
    if deps.keep_model:
        save_linker(linker, out / MODEL, log=log)
    records = _evaluate(linker, cell, cfg, [tasks[n] for n in cell.order])
    rises = {
        s.task: predicted_rise(linker.model, s) for s in states if s.method != "l2"
    }
    extra = {"train": _summary(log), "predicted_rise": rises}
    old = tasks[cell.order[0]]
    if (
        cell.tier == 2 and old.dictionary is not None
    ):  # the old task's drop, no old data
        start = load_linker(_required(deps.start))
        probe = drift_probe(
            start, linker, old, n=DRIFT_QUERIES, seed=cell.seed, device=cfg.train.device
        )
        extra["drift"] = probe.to_json()
    return records, extra


def _resume(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: CellDeps
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tier 3's start: the chosen tier-2 model, its second task consolidated.

    The model is the tier-2 cell's, or retrained here when that was not kept.
    """
    model_dir = Path(_required(deps.tier2)) / MODEL
    retrained = not (model_dir / "config.json").is_file()
    if retrained:  # deterministic: the same cell, seed and settings
        t2, t2_deps = _required(deps.tier2_cell), _required(deps.tier2_deps)
        again, _ = _continue(t2, cfg, tasks, out, replace(t2_deps, keep_model=True))
        model_dir = out / MODEL
    extra: dict[str, Any] = {
        "model_dir": os.path.relpath(model_dir, out.parent.parent),
        "retrained": retrained,
    }
    if retrained:  # to compare with the tier-2 cell's own records
        extra["retrained_records"] = again
    if cell.method in REGULARIZED:
        linker = load_linker(model_dir)
        method = state_method(cell.method)
        state = _state(linker, tasks[cell.order[-1]], method, cfg, cell.seed)
        save_state(out, state)
    return [], extra


_WORK = {
    CellKind.INDIVIDUAL: _individual,
    CellKind.COMBINED: _combined,
    CellKind.CONSOLIDATE: _consolidate,
    CellKind.TIER2: _continue,
    CellKind.RESUME: _resume,
    CellKind.TIER3: _continue,
}


# --------------------------------------------------------------------------- helpers


def _new(cfg: ExperimentConfig, train: Sequence[LinkingExample], seed: int) -> Linker:
    """A fresh linker for ``train``.

    ``num_features = 0`` / ``num_types = 0`` in the model settings switch the string
    features and the candidate types off.
    """
    settings = dict(cfg.model.settings)
    features = settings.pop("num_features", None) != 0
    types = settings.pop("num_types", None) != 0
    return new_linker(
        cfg.model.name, train, features=features, types=types, seed=seed, **settings
    )


def _settings(
    cfg: ExperimentConfig, seed: int, *, capped: bool = True, continual: bool = False
) -> TrainSettings:
    """The config's training settings for one cell (``continual``: on a new task)."""
    t = cfg.train
    lr = t.continual_lr if continual and t.continual_lr is not None else t.lr
    return TrainSettings(
        epochs=t.epochs,
        lr=lr,
        optimizer=t.continual_optimizer if continual else "adamw",
        clip_task_only=t.clip_task_only and continual,
        freeze_layers=t.freeze_layers,
        reinit_top=t.reinit_top,
        refresh=t.continual_refresh if continual else 0.0,
        refresh_temperature=t.continual_refresh_temperature if continual else 0.0,
        batch_size=t.batch_size,
        schedule=t.schedule,
        warmup=t.warmup,
        seed=seed,
        device=t.device,
        max_train=t.max_train_examples if capped else None,
        train_candidates=t.train_candidates,
        precision=t.precision,
    )


def _required(value: T | None) -> T:
    """A dependency the runner must have resolved for this kind of cell."""
    if value is None:
        raise ValueError("the runner did not resolve a dependency this cell needs")
    return value


def _state(
    linker: Linker, task: Task, method: str, cfg: ExperimentConfig, seed: int
) -> Any:
    """``consolidate_task`` with the config's curvature settings."""
    c = cfg.curvature
    return consolidate_task(
        linker,
        task,
        method=method,
        fisher=c.fisher,
        max_examples=c.max_examples,
        uncovered=c.uncovered.value,
        approx=c.approx,
        split=c.split,
        factor_rank=c.factor_rank if method == "kfac" else None,
        seed=seed,
        device=cfg.train.device,
    )


def _evaluate(
    linker: Linker, cell: Cell, cfg: ExperimentConfig, tasks: Sequence[Task]
) -> list[dict[str, Any]]:
    """One record per task and split (dev, test)."""
    records = []
    lam = list(cell.lam) if isinstance(cell.lam, tuple) else cell.lam
    for task in tasks:
        for split in ("dev", "test"):
            ev = evaluate_split(
                linker,
                task.split(split),
                batch_size=cfg.train.eval_batch_size,
                device=cfg.train.device,
                precision=cfg.train.precision,
            )
            records.append(
                {
                    "tier": cell.tier,
                    "order": list(cell.order),
                    "method": cell.method,
                    "lam": lam,
                    "seed": cell.seed,
                    "split": split,
                    "task": task.name,
                    "accuracy": 100.0 * ev.accuracy,
                    "mrr": ev.mrr,
                    "loss": ev.loss,
                    "n": ev.n,
                    "cell": cell.id,
                    "kind": cell.kind,
                }
            )
    return records


def _summary(log: Any) -> dict[str, Any]:
    """The training log without its per-epoch list."""
    return {k: v for k, v in log.to_json().items() if k != "epochs"}
