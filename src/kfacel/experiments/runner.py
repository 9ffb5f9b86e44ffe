"""The paper's protocol from an ``ExperimentConfig``: tiers 1–3 into a run directory.

``run_experiment`` executes the stages of ``sweep.py`` in order (tier 1, consolidations,
tier 2, tier-3 starting points, tier 3), each stage's cells independent of each other,
so ``jobs > 1`` runs them in spawned worker processes with ``max(1, cores // jobs)``
torch threads each. λ of tier 2 is chosen on dev (``sweep.choose``) before tier 3 is
planned from it (``tier3_lambda_grid``, appendix A).

The run directory::

    config.json      the resolved config (a resumed run must match it)
    tasks.json       each task's fingerprint (``task.json`` and splits' SHA-256) as
                     the run started; a resumed run refuses a changed task
    env.json         one entry per invocation: package versions, git commit, device,
                     seeds, jobs, tiers, start time, wall time of each stage
    metrics.jsonl    one record per evaluation (fields: ``run_cell.py``), rebuilt from
                     the cells after every stage
    selection.json   λ chosen per (order, method) in tiers 2 and 3, failed cells,
                     what was left out of a choice or of tier 3's plan, and why
    cells/<id>/      per cell: done.json (status, seconds, records); model/ for
                     tier-1 models (shared by every cell starting from them) and for
                     the chosen tier-2 models (the starts of tier 3); consolidation/
                     for consolidation states

Tier-2 models are kept only when tier 3 is asked for, and those not chosen are deleted
once tier 3's starting points exist. A chosen tier-2 model that was not kept (a run
first made with ``tiers = [1, 2]``) is retrained deterministically by its ``resume``
cell, which records the retrained accuracies beside the original ones.

Resume: a cell with ``done.json`` is skipped; anything else in its directory is an
interrupted attempt and is redone. Every file is written to a temporary name and
renamed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfacel._io import atomic_write_json, atomic_write_text
from kfacel._lock import write_lock
from kfacel.experiments import sweep
from kfacel.experiments.config import ConfigError, ExperimentConfig
from kfacel.experiments.run_cell import (
    DONE,
    MODEL,
    CellDeps,
    init_worker,
    read_done,
    run_cell,
    tasks_of,
)
from kfacel.experiments.rundir import (
    check_tasks,
    open_run_dir,
    record_stage,
    record_tasks,
)
from kfacel.experiments.sweep import REGULARIZED, REPLAYING, Cell, CellKind
from kfacel.training.trainer import check_device

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one invocation did.

    Attributes:
        run_dir: the run directory.
        ran: ids of cells run now.
        skipped: ids of cells finished before (resume).
        failed: ``(id, message)`` of failed cells (now or before).
        left_out: (order, method) pairs left out of a tier's λ choice or of tier
            3's plan, with the reason (``sweep.left_out``, ``sweep.plan_tier3``).
        seconds: wall time of each stage.
    """

    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path | None = None,
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run (or resume) the tiers of ``cfg`` into ``out`` (default ``cfg.output_dir``).

    Args:
        cfg: the experiment; ``cfg.tiers`` says which tiers (3 implies 2, 2 implies 1).
        out: the run directory.
        jobs: cells run in parallel processes (1: in this process).
        log: ``print``-like callable for one line per finished cell.

    Returns:
        What ran, what was skipped and what failed.

    Raises:
        ConfigError: the tasks cannot be read, or ``out`` holds something else
            (another config, files that are no run, or a run whose tasks have
            changed since); nothing is written then.
        ValueError: another process is writing ``out`` (its write lock is held).
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be positive, got {jobs}")
    run_dir = Path(out if out is not None else cfg.output_dir)
    build_missing_tasks(cfg, log)
    _check_before_writing(cfg)
    with write_lock(run_dir, "experiment"):  # one invocation writes a run at a time
        fingerprints = check_tasks(run_dir, cfg)  # a resumed run's tasks are unchanged
        open_run_dir(run_dir, cfg, jobs)
        record_tasks(run_dir, fingerprints)
        return _run_tiers(cfg, run_dir, jobs, log)


def _run_tiers(
    cfg: ExperimentConfig,
    run_dir: Path,
    jobs: int,
    log: Callable[[str], None] | None,
) -> RunSummary:
    """The stages of ``cfg``'s tiers in an opened run directory (``run_experiment``)."""
    names = [t.name for t in cfg.tasks]
    methods = [m.value for m in cfg.methods]
    seeds = list(cfg.seeds)
    tiers = set(cfg.tiers)
    tiers |= {2} if 3 in tiers else set()
    tiers |= {1} if 2 in tiers else set()
    stages = _Stages(run_dir, cfg.to_dict(), jobs, RunSummary(run_dir), log)
    stage = stages.run
    tol = cfg.penalty.new_task_tolerance
    t1 = sweep.plan_tier1(
        names, seeds, combined=cfg.combined and not cfg.pairs
    )  # chosen pairs: no Table 2
    stage("tier1", t1, lambda c: CellDeps())
    chosen2: dict[Any, Any] = {}
    chosen3: dict[Any, Any] = {}
    if 2 in tiers:
        firsts = sorted({a for a, _ in cfg.ordered_pairs()}) or names
        cons = sweep.plan_consolidations(firsts, methods, seeds)
        stage("consolidate", cons, lambda c: _deps(run_dir, c, {}, keep=False))
        pairs = cfg.ordered_pairs()
        t2 = sweep.plan_tier2(
            names, methods, cfg.lam_grid, seeds, pairs, cfg.budget_grid
        )
        stage(
            "tier2",
            t2,
            lambda c: _deps(run_dir, c, {}, keep=3 in tiers),
            lambda: _prune_finished_groups(run_dir, t2, tol),  # bounds the disk used
        )
        chosen2 = _choose(run_dir, 2, t2, tol, stages.summary)
    if 3 in tiers:
        resume = sweep.plan_resume(chosen2, seeds)
        stage("resume", resume, lambda c: _deps(run_dir, c, chosen2, keep=True))
        _prune(run_dir, t2, chosen2)
        p = cfg.penalty
        t3, skipped = sweep.plan_tier3(
            names, methods, seeds, chosen2, factors=p.tier3_factors,
            mean=p.tier3_mean, search_first=p.tier3_search_first,
        )  # fmt: skip
        stages.summary.left_out += skipped
        stage("tier3", t3, lambda c: _deps(run_dir, c, chosen2, keep=False))
        chosen3 = _choose(run_dir, 3, t3, tol, stages.summary)
    _write_selection(run_dir, chosen2, chosen3, stages.summary)
    return stages.summary


def _choose(
    run_dir: Path,
    tier: int,
    cells: Sequence[Cell],
    tolerance: float,
    summary: RunSummary,
) -> dict[Any, Any]:
    """λ chosen on dev among ``tier``'s ``cells``; what is left out goes to ``summary``."""
    records = load_records(run_dir)
    planned = {(c.order, c.method) for c in cells}
    summary.left_out += sweep.left_out(
        records, tier=tier, tolerance=tolerance, planned=planned
    )
    return sweep.choose(records, tier=tier, tolerance=tolerance)


def load_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every evaluation record of the finished cells, in cell-id order."""
    records = []
    for cell_dir in sorted((Path(run_dir) / "cells").glob("*")):
        done = read_done(cell_dir)
        if done is not None and done.get("status") == "ok":
            records += done.get("records", [])
    return records


def collect_metrics(run_dir: str | Path) -> Path:
    """Rewrite ``metrics.jsonl`` from the cells' ``done.json`` files (atomically)."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in load_records(run_dir))
    return atomic_write_text(Path(run_dir) / "metrics.jsonl", lines)


# ------------------------------------------------------------------------ internals


def build_missing_tasks(
    cfg: ExperimentConfig, log: Callable[[str], None] | None = None
) -> list[str]:
    """Build each PUBLIC-3 task of ``cfg`` whose directory is missing; their names.

    Only with ``cfg.benchmark_data``: what ``kfacel prepare benchmark --data DATA --out
    PARENT [--small] --task NAME`` builds, into the task's own path. Anything else
    missing is left for ``_check_before_writing`` to name.
    """
    if not cfg.benchmark_data:
        return []
    from kfacel.tasks.benchmark import TASKS, build_public3

    missing = [t for t in cfg.tasks if t.name in TASKS and not Path(t.path).exists()]
    data = Path(cfg.benchmark_data)
    if missing and not data.is_dir():
        raise ConfigError(
            f"benchmark_data: {data}: no such data directory (to build task "
            f"{missing[0].name} into {missing[0].path})"
        )
    for spec in missing:
        parent = Path(spec.path).parent
        small = " --small" if cfg.benchmark_small else ""
        if log is not None:
            log(f"building {spec.path}: kfacel prepare benchmark --data {data} "
                f"--out {parent}{small} --task {spec.name}")  # fmt: skip
        with write_lock(parent, "prepare benchmark"):
            build_public3(
                data, parent, small=cfg.benchmark_small, tasks=(spec.name,),
                overwrite=False,
            )  # fmt: skip
    return [t.name for t in missing]


def _check_before_writing(cfg: ExperimentConfig) -> None:
    """The device exists and every task is readable; else ``ConfigError``."""
    try:
        check_device(cfg.train.device)
    except ValueError as exc:
        raise ConfigError(f"train.{exc}") from None
    try:
        tasks_of(cfg)  # every task readable before anything is written
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the config's tasks: {exc}") from exc


@dataclass
class _Stages:
    """Runs the stages of one invocation, recording their times and metrics."""

    run_dir: Path
    config: dict[str, Any]
    jobs: int
    summary: RunSummary
    log: Callable[[str], None] | None

    def run(
        self,
        name: str,
        cells: Sequence[Cell],
        deps: Callable[[Cell], CellDeps],
        after: Callable[[], None] | None = None,
    ) -> None:
        """Run the unfinished ``cells`` of stage ``name``, then rewrite the metrics."""
        start, ran = time.perf_counter(), len(self.summary.ran)
        say = self.log or (lambda _: None)
        _execute(
            self.run_dir, self.config, cells, deps, self.jobs, self.summary, say,
            name, after,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        self.summary.seconds[name] = seconds
        record_stage(self.run_dir, name, seconds, len(self.summary.ran) - ran)
        collect_metrics(self.run_dir)


def _write_selection(
    run_dir: Path, chosen2: dict[Any, Any], chosen3: dict[Any, Any], summary: RunSummary
) -> None:
    """``selection.json``: the λ chosen per (order, method), failures, the rule."""
    atomic_write_json(
        run_dir / "selection.json",
        {
            "tier2": _choices(chosen2),
            "tier3": _choices(chosen3),
            "failed": [{"cell": c, "message": m} for c, m in summary.failed],
            "left_out": summary.left_out,
            "rule": sweep.SELECTION_RULE,
        },
        sort_keys=True,
    )


class _StartFailed(RuntimeError):
    """The cell a cell starts from failed (e.g. a non-finite loss)."""


def _cell_dir(run_dir: Path, cell: Cell) -> Path:
    return run_dir / "cells" / cell.id


def _deps(
    run_dir: Path, cell: Cell, chosen2: dict[Any, Any], *, keep: bool
) -> CellDeps:
    """Absolute paths a cell starts from: model, consolidation states, replay tasks."""
    first, s, m = cell.order[0], cell.seed, cell.method
    start = str(_cell_dir(run_dir, sweep.individual(first, s)) / MODEL)
    if cell.kind is CellKind.CONSOLIDATE:
        return CellDeps(start=start)
    states = []
    if m in REGULARIZED:
        cons = sweep.consolidation(first, sweep.state_method(m), s)
        _finished(run_dir, cons, "consolidation")
        states.append(str(_cell_dir(run_dir, cons)))
    if cell.kind is CellKind.TIER2:
        replay = (first,) if m in REPLAYING else ()
        return CellDeps(start, tuple(states), replay, keep_model=keep)
    if cell.kind is CellKind.RESUME:
        t2 = Cell(CellKind.TIER2, 2, cell.order, m, cell.lam, s)
        return CellDeps(
            tier2=str(_cell_dir(run_dir, t2)),
            tier2_cell=t2,
            tier2_deps=_deps(run_dir, t2, chosen2, keep=True),
        )
    pair = cell.order[:2]
    res = sweep.resume_point(pair[0], pair[1], m, chosen2[(pair, m)], s)
    res_done = _finished(run_dir, res, "start")
    if m in REGULARIZED:
        states.append(str(_cell_dir(run_dir, res)))
    model_dir = str(run_dir / res_done["model_dir"])
    return CellDeps(model_dir, tuple(states), pair if m in REPLAYING else ())


def _finished(run_dir: Path, cell: Cell, what: str) -> dict[str, Any]:
    """The ``done.json`` of a cell that finished ``ok``; else ``_StartFailed``."""
    done = read_done(_cell_dir(run_dir, cell))
    if done is None or done.get("status") != "ok":
        raise _StartFailed(f"its {what} {cell.id} did not finish")
    return done


def _execute(
    run_dir: Path,
    config: dict[str, Any],
    cells: Sequence[Cell],
    deps_of: Callable[[Cell], CellDeps],
    jobs: int,
    summary: RunSummary,
    say: Callable[[str], None],
    stage: str,
    after: Callable[[], None] | None = None,
) -> None:
    """Run the cells of one stage that have no ``done.json``, ``jobs`` at a time.

    ``after`` is called in this process after each finished cell.
    """
    todo = []
    for cell in cells:
        done = read_done(_cell_dir(run_dir, cell))
        if done is None:
            todo.append(cell)
            continue
        summary.skipped.append(cell.id)
        if done.get("status") != "ok":
            summary.failed.append((cell.id, str(done.get("message"))))
    if not todo:
        return
    say(f"{stage}: {len(todo)} cells to run, {len(cells) - len(todo)} done before")

    def finished(done: dict[str, Any], k: int) -> None:
        summary.ran.append(done["id"])
        status = done["status"]
        if status != "ok":
            summary.failed.append((done["id"], str(done["message"])))
            logger.warning("cell %s failed: %s", done["id"], done["message"])
        took = f"{done['seconds']:.1f} s"
        say(f"[{stage} {k}/{len(todo)}] {done['id']}: {status} ({took})")
        if after is not None:
            after()

    args = []
    for cell in todo:
        try:
            args.append((cell.to_json(), deps_of(cell), config, str(run_dir)))
        except _StartFailed as exc:  # its start failed: so does the cell
            fail = {
                **cell.to_json(),
                "status": "failed",
                "message": str(exc),
                "seconds": 0.0,
                "records": [],
            }
            atomic_write_json(_cell_dir(run_dir, cell) / DONE, fail, sort_keys=True)
            finished(fail, len(summary.ran) + 1)
    if jobs == 1:
        for k, a in enumerate(args, start=1):
            finished(run_cell(*a), k)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=init_worker, initargs=(threads, os.getpid())
    ) as pool:
        pending: set[Future[dict[str, Any]]] = {pool.submit(run_cell, *a) for a in args}
        k = 0
        try:
            while pending:
                ready, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    k += 1
                    finished(fut.result(), k)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _prune(run_dir: Path, tier2: Sequence[Cell], chosen2: dict[Any, Any]) -> None:
    """Delete the models of tier-2 cells that tier 3 does not start from."""
    for cell in tier2:
        key = (cell.order, cell.method)
        if key in chosen2 and chosen2[key] == cell.lam:
            continue
        shutil.rmtree(_cell_dir(run_dir, cell) / MODEL, ignore_errors=True)


def _prune_finished_groups(run_dir: Path, tier2: Sequence[Cell], tol: float) -> None:
    """``_prune`` the orders of tier 2 whose every cell has finished.

    A whole order, not one (order, method): the λ choice of a method is measured from
    plain fine-tuning's cell of the same order (``sweep.choose``), so it is final only
    once that cell has finished too.
    """
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for cell in tier2:
        groups.setdefault(cell.order, []).append(cell)
    complete = [
        c
        for cells in groups.values()
        if all((_cell_dir(run_dir, x) / DONE).is_file() for x in cells)
        for c in cells
    ]
    if complete:
        chosen = sweep.choose(load_records(run_dir), tier=2, tolerance=tol)
        _prune(run_dir, complete, chosen)


def _choices(chosen: dict[Any, Any]) -> list[dict[str, Any]]:
    return [
        {
            "order": list(order),
            "method": m,
            "lam": list(lam) if isinstance(lam, tuple) else lam,
        }
        for (order, m), lam in sorted(chosen.items(), key=lambda kv: str(kv[0]))
    ]
