"""The report of a run directory: Markdown, CSV tables and PNG figures; never trains.

``write_report(run_dir)`` reads ``config.json``, ``metrics.jsonl`` and the cells'
``done.json`` files (``results.read_run``) and writes ``run_dir/report/``: ``report.md``
with every table of ``tables.build_tables``, one CSV per table, each (order, method)
left out of the tables and why (``left_out``), the failed cells with their messages,
the wall time of each kind of cell and of each stage (``env.json``); and PNG figures:
``lambda_tradeoff.png`` (old- vs new-task dev accuracy per λ, one panel per permutation,
one line per method), one accuracy matrix per order and method, and, where the cells
recorded the penalty's prediction, ``calibration.png`` (predicted against measured rise
of the old task's loss) with its table; and ``results.json``, every claim of the run
with its intervals over seeds (``claims.py``; schema in docs/experiments.md).

An **armed** run directory holds ``arms.json`` (``config``, ``config_digest``, ``arms``)
and one run directory per arm (``RUN/product/``, ``RUN/paper/``): each arm is reported
into ``RUN/<arm>/report/``, and ``RUN/results.json`` (every arm's claims, ids prefixed
by the arm) and ``RUN/report.md`` (pointers and the claims side by side) are written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import permutations
from pathlib import Path
from typing import Any

from kfacel._io import atomic_write_json, atomic_write_text
from kfacel.experiments import sweep
from kfacel.experiments.claims import build_claims, results_document
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
    """Write ``report.md``, ``results.json``, the tables' CSVs and the figures.

    An armed run directory (one holding ``arms.json``) is reported arm by arm
    (``write_armed_report``).

    Args:
        run_dir: the run directory.
        out: the report directory (default ``run_dir/report``).
        figures: also draw the PNG figures (a second or so each).

    Returns:
        The paths written.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.json`` (not a run directory).
        ValueError: ``out`` given for an armed run directory.
    """
    if is_armed(run_dir):
        if out is not None:
            raise ValueError(f"{run_dir}: an armed run directory is reported in place")
        return write_armed_report(run_dir, figures=figures)
    results, dones = read_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report"
    points = calibration_points(results.records, dones)
    claims = build_claims(results)
    tables = build_tables(results, points, claims)
    written = [_write(out / f"{t.name}.csv", t.csv()) for t in tables]
    env = _read_json(Path(run_dir) / "env.json", {})
    doc = results_document(results.config, env, claims)
    written.append(atomic_write_json(out / "results.json", doc, allow_nan=False))
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
        f"{len(dones)} cells. Every claim, with its intervals and what it was "
        "computed from: `results.json`.",
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


NOT_STARTED = "no run directory yet"
ARM_KEYS = ("run", "config_digest", "commit", "machine", "status")


def is_armed(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is an armed run directory (it holds ``arms.json``)."""
    return (Path(run_dir) / "arms.json").is_file()


def read_arms(run_dir: str | Path) -> dict[str, Any]:
    """``arms.json`` of an armed run directory, its arms checked.

    Raises:
        ValueError: ``arms`` is not a non-empty list of distinct plain directory names.
    """
    path = Path(run_dir) / "arms.json"
    arms = json.loads(path.read_text(encoding="utf-8"))
    names = arms.get("arms") if isinstance(arms, dict) else None
    if (
        not isinstance(names, list)
        or not names
        or len(set(names)) != len(names)
        or not all(
            isinstance(n, str) and n and n == Path(n).name != ".." for n in names
        )
    ):
        raise ValueError(
            f"{path}: arms must list distinct directory names, got {names}"
        )
    return arms


def write_armed_report(run_dir: str | Path, *, figures: bool = True) -> list[Path]:
    """Report each arm into ``RUN/<arm>/report/``; ``RUN/results.json``, ``RUN/report.md``.

    ``RUN/results.json`` holds every arm's claims, their ids prefixed by the arm
    (``product/tier2/kfac-budget/reduction/out-of-sample``); ``RUN/report.md`` points
    at each arm's report and lists the claims side by side.
    """
    run_dir = Path(run_dir)
    arms = read_arms(run_dir)
    _check_armed_outputs(run_dir)
    written: list[Path] = []
    docs: dict[str, dict[str, Any]] = {}
    for arm in arms["arms"]:
        if not (run_dir / arm / "config.json").is_file():  # not started yet
            docs[arm] = {"status": NOT_STARTED}
            continue
        written += write_report(run_dir / arm, figures=figures)
        docs[arm] = _read_json(run_dir / arm / "report" / "results.json", {})
    doc = {
        "run": run_dir.name,
        "config": arms.get("config"),
        "config_digest": arms.get("config_digest"),
        "arms": {
            arm: {k: d.get(k) for k in ARM_KEYS if k in d} for arm, d in docs.items()
        },
        "claims": [
            {**c, "id": f"{arm}/{c['id']}", "arm": arm}
            for arm, d in docs.items()
            for c in d.get("claims", [])
        ],
    }
    written.append(atomic_write_json(run_dir / "results.json", doc, allow_nan=False))
    written.append(_write(run_dir / "report.md", _armed_markdown(run_dir.name, doc)))
    return written


def _check_armed_outputs(run_dir: Path) -> None:
    """Refuse to replace a ``report.md`` or ``results.json`` this module did not write."""
    md, res = run_dir / "report.md", run_dir / "results.json"
    if md.exists() and not md.read_text(encoding="utf-8").startswith("# Armed run "):
        raise ValueError(f"{md}: not an armed run's report; refusing to replace it")
    if res.exists() and "arms" not in _read_json(res, {}):
        raise ValueError(f"{res}: not an armed run's results; refusing to replace it")


def _armed_markdown(name: str, doc: dict[str, Any]) -> str:
    """``RUN/report.md`` of an armed run: links to the arms, the claims side by side."""
    lines = [f"# Armed run {name}", "", f"Config: `{doc['config']}`.", ""]
    for arm, meta in doc["arms"].items():
        if meta.get("status") == NOT_STARTED:
            lines.append(f"- {arm}: {NOT_STARTED}")
            continue
        lines.append(
            f"- {arm}: [{arm}/report/report.md]({arm}/report/report.md), "
            f"[{arm}/report/results.json]({arm}/report/results.json), "
            f"run {meta['run']}, commit {meta['commit']}"
        )
    lines += ["", "All claims: `results.json`.", "", "## Claims", ""]
    lines += ["| Claim | Value | 95% t interval | 95% bootstrap | Seeds |"]
    lines += ["|---|---|---|---|---|"]
    for c in doc["claims"]:
        cells = [_num(c["value"]), _span(c["interval"]), _span(c["bootstrap"])]
        lines.append(f"| {c['id']} | " + " | ".join(cells) + f" | {c['seeds']} |")
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _span(x: list[float] | None) -> str:
    return "–" if x is None else f"[{x[0]:.2f}, {x[1]:.2f}]"


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default
