"""A run directory's evaluations, read once and indexed for the tables and figures.

``read_run(run_dir)`` returns the run's ``RunResults`` (test and dev accuracies of every
cell, seeds averaged, with the λ chosen on dev per tier: ``sweep.choose``) and the
cells' ``done.json`` records (status, message, seconds); ``finished_cells`` and
``cell_record`` read a run's finished cells one by one, for summaries over every cell
rather than the chosen λ. Nothing here trains or writes.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kfacel.experiments import sweep
from kfacel.experiments.metrics import perc_delta


class RunResults:
    """The records of a run, indexed for the tables (test accuracy, seeds averaged)."""

    def __init__(self, config: dict[str, Any], records: Sequence[dict[str, Any]]):
        self.config = config
        self.records = list(records)
        self.tasks = [t["name"] for t in config["tasks"]]
        self.methods = list(config["methods"])
        tol = float(config.get("penalty", {}).get("new_task_tolerance", 2.0))
        self.chosen = {
            tier: sweep.choose(self.records, tier=tier, tolerance=tol)
            for tier in (2, 3)
        }
        acc: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        self._by_seed: dict[tuple[Any, ...], dict[int, float]] = defaultdict(dict)
        for r in self.records:
            lam = tuple(r["lam"]) if isinstance(r["lam"], list) else r["lam"]
            key = (
                r["kind"],
                tuple(r["order"]),
                r["method"],
                lam,
                r["task"],
                r["split"],
            )
            acc[key].append(float(r["accuracy"]))
            self._by_seed[key][int(r.get("seed", 0))] = float(r["accuracy"])
        self._acc = {k: float(np.mean(v)) for k, v in acc.items()}

    def accuracy(
        self,
        kind: str,
        order: Sequence[str],
        method: str,
        lam: Any,
        task: str,
        split: str = "test",
    ) -> float:
        """Mean accuracy over seeds, NaN if never evaluated."""
        key = (kind, tuple(order), method, lam, task, split)
        return self._acc.get(key, math.nan)

    def by_seed(
        self,
        kind: str,
        order: Sequence[str],
        method: str,
        lam: Any,
        task: str,
        split: str = "test",
    ) -> dict[int, float]:
        """Accuracy per seed (empty if never evaluated)."""
        return dict(
            self._by_seed.get((kind, tuple(order), method, lam, task, split), {})
        )

    def seeds(self) -> list[int]:
        """Every seed the run's records hold."""
        return sorted({s for per in self._by_seed.values() for s in per})

    def seed_row(
        self, tier: int, order: Sequence[str], method: str, seed: int
    ) -> tuple[float, float, float] | None:
        """One seed at the chosen λ: (Perc Δ of task A, its test accuracy, last task's).

        Perc Δ is against that seed's individual model; None where a number is missing.
        """
        lam = self.chosen[tier][(tuple(order), method)]
        kind, a, last = f"tier{tier}", order[0], order[-1]
        acc_a = self._by_seed.get((kind, tuple(order), method, lam, a, "test"), {})
        acc_b = self._by_seed.get((kind, tuple(order), method, lam, last, "test"), {})
        ind = self._by_seed.get(("individual", (a,), "none", None, a, "test"), {})
        if seed not in acc_a or seed not in acc_b or not ind.get(seed):
            return None
        return perc_delta(acc_a[seed], ind[seed]), acc_a[seed], acc_b[seed]

    def individual(self, task: str, split: str = "test") -> float:
        """Tier-1 accuracy of ``task`` trained alone."""
        return self.accuracy("individual", (task,), "none", None, task, split)

    def delta(self, acc: float, task: str) -> float:
        """Perc Δ against the individual model, NaN where undefined."""
        ref = self.individual(task)
        if not (math.isfinite(acc) and math.isfinite(ref) and ref > 0):
            return math.nan
        return perc_delta(acc, ref)

    def rows(self, tier: int) -> list[tuple[tuple[str, ...], str, Any]]:
        """``(order, method, λ)`` chosen in ``tier``, in task and method order."""
        chosen = self.chosen[tier]
        rank = {m: i for i, m in enumerate(self.methods)}
        keys = sorted(
            chosen, key=lambda k: ([self.tasks.index(t) for t in k[0]], rank[k[1]])
        )
        return [(order, m, chosen[(order, m)]) for order, m in keys]

    def chosen_row(self, tier: int, order: Sequence[str], method: str) -> list[float]:
        """Test accuracy and Perc Δ on each task of ``order`` at the chosen λ."""
        lam = self.chosen[tier][(tuple(order), method)]
        out: list[float] = []
        for t in order:
            a = self.accuracy(f"tier{tier}", order, method, lam, t)
            out += [a, self.delta(a, t)]
        return out


def read_run(run_dir: str | Path) -> tuple[RunResults, list[dict[str, Any]]]:
    """The run's results and its cells' ``done.json`` records.

    The records are ``metrics.jsonl``'s (rewritten at the end of each stage) and those
    of cells finished since, so that a running or interrupted run reports every cell
    finished so far.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.json`` (not a run directory).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json, not a run directory")
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    metrics = run_dir / "metrics.jsonl"
    text = metrics.read_text(encoding="utf-8") if metrics.is_file() else ""
    records = [json.loads(x) for x in text.splitlines() if x.strip()]
    dones = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((run_dir / "cells").glob("*/done.json"))
    ]
    collected = {r.get("cell") for r in records}
    records += [
        r
        for d in dones
        if d.get("status") == "ok" and d.get("id") not in collected
        for r in d.get("records", [])
    ]
    return RunResults(config, records), dones


def finished_cells(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``done.json`` record of every cell of ``run_dir`` that finished ``ok``.

    In cell-id order; a cell that failed, or was interrupted before writing its
    ``done.json``, is not among them.
    """
    out = []
    for done in sorted((Path(run_dir) / "cells").glob("*/done.json")):
        d = json.loads(done.read_text(encoding="utf-8"))
        if d.get("status") == "ok":
            out.append(d)
    return out


def cell_record(done: dict[str, Any], task: str, split: str = "test") -> dict[str, Any]:
    """The evaluation record of ``task`` on ``split`` in a cell's ``done.json``.

    Raises:
        StopIteration: the cell did not evaluate ``task`` on ``split``.
    """
    return next(r for r in done["records"] if r["task"] == task and r["split"] == split)


def calibration_points(
    records: Sequence[dict[str, Any]], dones: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Predicted against measured rise of the first task's mean test loss, per cell.

    One point per finished continual cell of tier 2 with a penalty's prediction
    (``done.json`` → ``predicted_rise``, ``½ ΔᵀF_AΔ``): the measured rise is the cell's
    test loss on task A minus A's individual model's (same seed). Cells of runs made
    before losses were recorded give no point.
    """
    ind = {
        (r["task"], r["seed"]): r["loss"]
        for r in records
        if r["kind"] == "individual" and r["split"] == "test" and "loss" in r
    }
    out = []
    for d in dones:
        if d.get("kind") != "tier2" or d.get("status") != "ok":
            continue
        a = d["order"][0]
        rise = (d.get("predicted_rise") or {}).get(a)
        if rise is None:
            continue
        test = [
            r for r in d.get("records", []) if r["task"] == a and r["split"] == "test"
        ]
        if test and "loss" in test[0] and (a, d["seed"]) in ind:
            measured = test[0]["loss"] - ind[(a, d["seed"])]
            out.append(
                {
                    "method": d["method"],
                    "order": tuple(d["order"]),
                    "predicted": rise,
                    "measured": measured,
                }
            )
    return out


def accuracy_matrices(
    r: RunResults,
) -> dict[tuple[tuple[str, ...], str], np.ndarray]:
    """``acc[after step, on task]`` (test, %) per longest chosen order and method.

    Row 0 is the first task's individual model, row ``k`` the chosen model after
    ``k + 1`` tasks; tasks not yet seen are NaN.
    """
    top = 3 if r.rows(3) else 2
    out = {}
    for order, m, _ in r.rows(top):
        mat = np.full((len(order), len(order)), np.nan)
        mat[0, 0] = r.individual(order[0])
        for step in range(2, len(order) + 1):
            prefix = order[:step]
            if (prefix, m) not in r.chosen[step]:
                break
            mat[step - 1, :step] = r.chosen_row(step, prefix, m)[::2]
        out[(order, m)] = mat
    return out
