"""One cell of a run: load, train or consolidate, evaluate, write its directory.

``run_cell`` is the one entry point; it runs in the runner's process (``--jobs 1``)
or in a spawned worker, and takes and returns plain JSON values only. A cell writes into
``cells/<id>/`` and finishes by writing ``done.json`` atomically: its status (``ok`` or
``failed``), the seconds it took, what it trained and the evaluation records that
``metrics.jsonl`` collects. A directory without ``done.json`` is the leftover of an
interrupted cell and is cleared before the cell runs again.

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
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kfacel.consolidation import build_penalty, load_state, save_state
from kfacel.data.records import LinkingExample
from kfacel.data.tasks import Task, load_task
from kfacel.experiments.config import ExperimentConfig
from kfacel.experiments.sweep import REGULARIZED, Cell
from kfacel.training.continual import consolidate_task, discriminative_lr_groups
from kfacel.training.pipeline import (
    Linker,
    evaluate_split,
    fit_task,
    load_linker,
    new_linker,
    save_linker,
)

DONE = "done.json"
MODEL = "model"
_TASKS: dict[str, Task] = {}  # per process: every cell of a worker reads them once


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_done(cell_dir: Path) -> dict[str, Any] | None:
    """The ``done.json`` of a finished cell, or None."""
    path = cell_dir / DONE
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def tasks_of(cfg: ExperimentConfig) -> dict[str, Task]:
    """The config's tasks by name, loaded once per process."""
    out = {}
    for spec in cfg.tasks:
        key = str(Path(spec.path).resolve())
        if key not in _TASKS:
            _TASKS[key] = load_task(spec.path)
        out[spec.name] = _TASKS[key]
    return out


def init_worker(threads: int) -> None:
    """Worker initializer: CPU threads per worker process."""
    import torch

    torch.set_num_threads(max(1, threads))


def run_cell(
    cell_json: Mapping[str, Any],
    deps: Mapping[str, Any],
    config: Mapping[str, Any],
    run_dir: str,
) -> dict[str, Any]:
    """Run one cell and write its directory; returns its ``done.json`` content.

    Args:
        cell_json: ``Cell.to_json()``.
        deps: absolute paths and flags the runner resolved: ``start`` (model dir to
            continue from), ``states`` (dirs whose consolidation states penalize, in
            task order), ``replay`` (task names), ``keep_model``; for ``resume``:
            ``tier2`` (the chosen tier-2 cell) and ``tier2_deps``.
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
    write_json(out / DONE, done)
    return done


# ----------------------------------------------------------------------------- kinds


def _individual(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tier 1: one task from a fresh model; the checkpoint is kept."""
    task = tasks[cell.order[0]]
    linker = _new(cfg, task.train, cell.seed)
    log = _fit(linker, task, cfg, cell.seed)
    save_linker(linker, out / MODEL, log=log)
    return _evaluate(linker, cell, cfg, [task]), {"train": _summary(log)}


def _combined(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: Any
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
    log = _fit(linker, union, cfg, cell.seed, capped=False)
    return _evaluate(linker, cell, cfg, parts), {"train": _summary(log)}


def _consolidate(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Anchor and curvature of a tier-1 model, shared by every cell that needs it."""
    linker = load_linker(deps["start"])
    state = _state(linker, tasks[cell.order[0]], cell.method, cfg, cell.seed)
    save_state(out, state)
    return [], {"examples_used": state.meta.get("examples_used")}


def _continue(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tiers 2 and 3: train the start model on the last task of the order."""
    linker = load_linker(deps["start"])
    states = [s for d in deps.get("states", ()) for s in load_state(d, linker.model)]
    method = cell.method if cell.method in REGULARIZED else "none"
    lams: list[float] = []
    if method != "none":
        if isinstance(cell.lam, tuple):
            lams = list(cell.lam)
        elif cell.lam is not None:
            lams = [float(cell.lam)] * len(states)
    penalty = build_penalty(method, states, lams, damping=cfg.curvature.damping)
    groups = None
    if cell.method == "lrc":
        groups = discriminative_lr_groups(
            linker.model, cfg.train.lr, cfg.train.lrc_gamma
        )
    cap = cfg.train.max_train_examples
    replay: list[LinkingExample] = [
        ex for n in deps.get("replay", ()) for ex in tasks[n].train[: cap or None]
    ]
    log = _fit(
        linker,
        tasks[cell.order[-1]],
        cfg,
        cell.seed,
        penalty=penalty,
        lr_groups=groups,
        replay=replay,
    )
    if deps.get("keep_model"):
        save_linker(linker, out / MODEL, log=log)
    records = _evaluate(linker, cell, cfg, [tasks[n] for n in cell.order])
    return records, {"train": _summary(log)}


def _resume(
    cell: Cell, cfg: ExperimentConfig, tasks: dict[str, Task], out: Path, deps: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tier 3's start: the chosen tier-2 model, its second task consolidated.

    The model is the tier-2 cell's, or retrained here when that was not kept.
    """
    model_dir = Path(deps["tier2"]) / MODEL
    retrained = not (model_dir / "config.json").is_file()
    if retrained:  # deterministic: the same cell, seed and settings
        t2 = Cell.from_json(deps["tier2_json"])
        again, _ = _continue(
            t2, cfg, tasks, out, {**deps["tier2_deps"], "keep_model": True}
        )
        model_dir = out / MODEL
    extra: dict[str, Any] = {
        "model_dir": os.path.relpath(model_dir, out.parent.parent),
        "retrained": retrained,
    }
    if retrained:  # to compare with the tier-2 cell's own records
        extra["retrained_records"] = again
    if cell.method in REGULARIZED:
        linker = load_linker(model_dir)
        state = _state(linker, tasks[cell.order[-1]], cell.method, cfg, cell.seed)
        save_state(out, state)
    return [], extra


_WORK = {
    "individual": _individual,
    "combined": _combined,
    "consolidate": _consolidate,
    "tier2": _continue,
    "resume": _resume,
    "tier3": _continue,
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


def _fit(
    linker: Linker,
    task: Task,
    cfg: ExperimentConfig,
    seed: int,
    *,
    capped: bool = True,
    **kwargs: Any,
) -> Any:
    """``fit_task`` with the config's training settings."""
    t = cfg.train
    return fit_task(
        linker,
        task,
        epochs=t.epochs,
        lr=t.lr,
        schedule=t.schedule,
        warmup=t.warmup,
        batch_size=t.batch_size,
        seed=seed,
        device=t.device,
        max_train=t.max_train_examples if capped else None,
        replay_every=t.replay_every,
        replay_n=t.replay_batches,
        **kwargs,
    )


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
                    "n": ev.n,
                    "cell": cell.id,
                    "kind": cell.kind,
                }
            )
    return records


def _summary(log: Any) -> dict[str, Any]:
    """The training log without its per-epoch list."""
    return {k: v for k, v in log.to_json().items() if k != "epochs"}
