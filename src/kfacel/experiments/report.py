"""The report of a run directory: Markdown, CSV tables and PNG figures; never trains.

``write_report(run_dir)`` reads ``config.json``, ``metrics.jsonl`` and the cells'
``done.json`` files (``results.read_run``) and writes ``run_dir/report/``: ``report.md``
with every table of ``tables.build_tables``, one CSV per table, each (order, method)
left out of the tables and why (``left_out``), the failed cells with their messages,
the wall time of each kind of cell and of each stage (``env.json``); and PNG figures:
``lambda_tradeoff.png`` (old- vs new-task dev accuracy per λ, one panel per permutation,
one line per method), one accuracy matrix per order and method, and, where the cells
recorded the penalty's prediction, ``calibration.png`` (predicted against measured rise
of the old task's loss) with its table.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import permutations
from pathlib import Path

from kfacel._io import atomic_write_text
from kfacel.experiments import sweep
from kfacel.experiments.figures import (
    plot_accuracy_matrix,
    plot_calibration,
    plot_lambda_tradeoff,
)
from kfacel.experiments.metrics import TIER3_FACTORS
from kfacel.experiments.results import (
    RunResults,
    accuracy_matrices,
    calibration_points,
    read_run,
)
from kfacel.experiments.tables import build_tables


def write_report(
    run_dir: str | Path, out: str | Path | None = None, *, figures: bool = True
) -> list[Path]:
    """Write ``report.md``, the tables' CSVs and the figures; returns the paths.

    Args:
        run_dir: the run directory.
        out: the report directory (default ``run_dir/report``).
        figures: also draw the PNG figures (a second or so each).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.json`` (not a run directory).
    """
    results, dones = read_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report"
    points = calibration_points(results.records, dones)
    tables = build_tables(results, points)
    written = [_write(out / f"{t.name}.csv", t.csv()) for t in tables]
    pngs = _figures(results, out) if figures else []
    if figures and points:
        pngs.append(Path(plot_calibration(points, out / "calibration.png")))
    written += pngs
    failed = [d for d in dones if d.get("status") != "ok"]
    seconds: dict[str, float] = defaultdict(float)
    for d in dones:
        seconds[d["kind"]] += float(d.get("seconds", 0.0))
    config = results.config
    lines = [
        f"# Run {config['name']}",
        "",
        f"Tasks: {', '.join(results.tasks)}; methods: {', '.join(results.methods)}; "
        f"seeds: {config['seeds']}; {len(results.records)} evaluations, "
        f"{len(dones)} cells.",
        "",
    ]
    lines += [t.markdown() for t in tables]
    lines += ["## Left out", ""]
    lines += [f"- {x}" for x in left_out(results)] or ["Nothing was left out."]
    lines += ["", "## Failed cells", ""]
    lines += [f"- {d['id']}: {d.get('message')}" for d in failed] or ["None failed."]
    lines += ["", "## Wall time per kind of cell (s, summed over cells)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in sorted(seconds.items())]
    lines += [
        "",
        "## Wall time per stage (s, per invocation of `kfacel experiment`)",
        "",
    ]
    lines += _stage_lines(Path(run_dir) / "env.json")
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in pngs]
    written.append(_write(out / "report.md", "\n".join(lines) + "\n"))
    return written


def left_out(r: RunResults) -> list[str]:
    """Each (order, method) the run plans that has no row in the tables, and why.

    The same lines as ``selection.json``'s ``left_out`` (``sweep.left_out`` and
    ``sweep.plan_tier3``), from the records finished so far.
    """
    cfg, tiers = r.config, set(r.config.get("tiers", (1, 2, 3)))
    p = cfg.get("penalty", {})
    tol = float(p.get("new_task_tolerance", 2.0))
    pairs = [tuple(x.split(">", 1)) for x in cfg.get("pairs", ())]
    lines: list[str] = []
    if tiers & {2, 3}:
        orders = pairs or list(permutations(r.tasks, 2))
        planned = [(o, m) for o in orders for m in r.methods]
        lines += sweep.left_out(r.records, tier=2, tolerance=tol, planned=planned)
    if 3 in tiers:
        cells, skipped = sweep.plan_tier3(
            r.tasks, r.methods, cfg.get("seeds", [0]), r.chosen[2],
            factors=p.get("tier3_factors", TIER3_FACTORS),
            mean=p.get("tier3_mean", "geometric"),
            search_first=p.get("tier3_search_first", False),
        )  # fmt: skip
        planned = [(c.order, c.method) for c in cells]
        lines += skipped
        lines += sweep.left_out(r.records, tier=3, tolerance=tol, planned=planned)
    return lines


def _stage_lines(env_path: Path) -> list[str]:
    """One line per invocation: its start, machine, jobs and each stage's wall time."""
    if not env_path.is_file():
        return ["No env.json."]
    lines = []
    for session in json.loads(env_path.read_text(encoding="utf-8")).get("sessions", []):
        took = ", ".join(
            f"{x['stage']} {x['seconds']:.0f} ({x['cells_run']} cells)"
            for x in session.get("stages", [])
        )
        lines.append(
            f"- {session.get('started')}, {session.get('device_name')}, "
            f"{session.get('cpu_count')} cores, jobs {session.get('jobs')}: "
            + (took or "no stage recorded")
        )
    return lines


def _figures(r: RunResults, out: Path) -> list[Path]:
    """λ trade-off (tier 2, dev) and one accuracy matrix per chosen sequence."""
    paths = []
    dev = {
        (x["cell"], x["task"]): x
        for x in r.records
        if x["tier"] == 2 and x["split"] == "dev"
    }
    trade = []
    for (cell, task), rec in sorted(dev.items()):
        a, b = rec["order"]
        if task == a and (cell, b) in dev:
            trade.append(
                {
                    "permutation": f"{a}→{b}",
                    "method": rec["method"],
                    "lam": rec["lam"],
                    "old_acc": rec["accuracy"],
                    "new_acc": dev[(cell, b)]["accuracy"],
                }
            )
    if trade:
        paths.append(Path(plot_lambda_tradeoff(trade, out / "lambda_tradeoff.png")))
    for (order, m), mat in accuracy_matrices(r).items():
        name = f"accuracy_{'-'.join(order)}_{m}.png".replace("/", "_")
        paths.append(
            Path(plot_accuracy_matrix(mat, list(order), out / "figures" / name))
        )
    return paths


def _write(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)
