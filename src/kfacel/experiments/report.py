"""Tables and figures of a run directory, in the form of the paper's; never trains.

``write_report(run_dir)`` reads ``config.json``, ``metrics.jsonl`` and the cells'
``done.json`` files and writes ``run_dir/report/``: ``report.md`` and one CSV per table,

- **Table 1** baselines: every method on the first permutation (task A accuracy and
  Perc Δ; the paper ran it on 10% samples: the ``-small`` configs),
- **Table 2** individual vs combined training,
- **Table 3** tier 2: accuracy and Perc Δ on tasks A and B, per permutation and method,
- **Table 4** tier 3: the same on tasks A, B and C,
- **Table 6** the λ chosen on dev,
- the **forgetting reduction** of every method against plain fine-tuning (DESIGN.md §5)
  with the unregularized forgetting beside it, flagging permutations where it is below
  5% (the ratio is then noisy) or absent (undefined),
- failed cells with their messages, and the wall time of each kind of cell;

and PNG figures: ``lambda_tradeoff.png`` (old- vs new-task dev accuracy per λ, one panel
per permutation, one line per method) and one accuracy matrix per order and method.

Rows use the λ chosen on dev (``sweep.choose``) and report test accuracies, averaged
over seeds; Perc Δ is against the task's individual (tier-1) test accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfacel.experiments import sweep
from kfacel.experiments.figures import plot_accuracy_matrix, plot_lambda_tradeoff
from kfacel.experiments.metrics import forgetting_reduction, perc_delta

SMALL_FORGETTING = 5.0  # percent (relative): the forgetting reduction is noisy below


@dataclass(frozen=True)
class Table:
    """One table: a title, column names, rows of plain values and a note."""

    name: str
    title: str
    header: tuple[str, ...]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        """The table as Markdown (numbers with two decimals, NaN/None as –)."""
        lines = [f"## {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        if not self.rows:
            lines += ["", "No rows in this run (they need tier 2 or a later tier)."]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The table as CSV (full precision, empty for NaN/None)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        for row in self.rows:
            writer.writerow(["" if _missing(v) else v for v in row])
        return buf.getvalue()


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


def build_tables(results: RunResults) -> list[Table]:
    """Tables 1, 2, 3, 4, 6 and the forgetting reduction, where the run has the data."""
    r = results
    tables = []
    rows2 = r.rows(2)
    if rows2:
        first = rows2[0][0]
        t1 = Table(
            "table1",
            f"Table 1: baselines on {' → '.join(first)}",
            ("Perm.", "Method", "λ", "Task A Acc.", "Perc. Δ"),
            note="The paper's Table 1 compares the baselines on 10% samples.",
        )
        t1.rows.append([first[0], "individual", None, r.individual(first[0]), None])
        for order, m, lam in rows2:
            if order == first:
                a, d = r.chosen_row(2, order, m)[:2]
                t1.rows.append([" → ".join(order), m, _lam(lam), a, d])
        tables.append(t1)
    t2 = Table(
        "table2",
        "Table 2: individual and combined training",
        ("Training", "Dataset", "Acc.", "Dev Acc."),
    )
    for t in r.tasks:
        t2.rows.append(["Individual", t, r.individual(t), r.individual(t, "dev")])
    for t in r.tasks:
        comb = r.accuracy("combined", r.tasks, "none", None, t)
        if math.isfinite(comb):
            dev = r.accuracy("combined", r.tasks, "none", None, t, "dev")
            t2.rows.append(["Combined", t, comb, dev])
    tables.append(t2)
    for tier, name, title in (
        (2, "table3", "Table 3: tier 2"),
        (3, "table4", "Table 4: tier 3"),
    ):
        rows = r.rows(tier)
        if not rows:
            continue
        letters = "ABC"[:tier]
        header = ["Perm.", "Method", "λ"]
        for x in letters:
            header += [f"Task {x} Acc.", f"Task {x} Perc. Δ"]
        tab = Table(
            name,
            title,
            tuple(header),
            note="Test accuracy (%) at the λ chosen on dev; Perc. Δ against the "
            "task's individual model.",
        )
        for order, m, lam in rows:
            row = r.chosen_row(tier, order, m)
            tab.rows.append([" → ".join(order), m, _lam(lam), *row])
        tables.append(tab)
    tables.append(_lambda_table(r))
    tables.append(_forgetting_table(r))
    if r.rows(2):
        tables.append(_matrix_table(r))
    return tables


def _lambda_table(r: RunResults) -> Table:
    """Table 6: λ of the first task (tier 2) and of the second (tier 3) per pair."""
    tab = Table(
        "table6",
        "Table 6: optimal λ (chosen on dev)",
        (
            "Perm.",
            "Method",
            "Task A (tier 2)",
            "Tier 3 order",
            "Task A (tier 3)",
            "Task B (tier 3)",
        ),
    )
    for order, m, lam in r.rows(2):
        if m not in sweep.REGULARIZED:
            continue
        later = [
            (o, l3) for (o, mm), l3 in r.chosen[3].items() if mm == m and o[:2] == order
        ]
        if not later:
            tab.rows.append([" → ".join(order), m, _lam(lam), None, None, None])
        for o, l3 in sorted(later):
            lams = [_lam(x) for x in (l3 if isinstance(l3, tuple) else (l3,))]
            tab.rows.append([" → ".join(order), m, _lam(lam), " → ".join(o), *lams])
    return tab


def _forgetting_table(r: RunResults) -> Table:
    """Forgetting reduction per tier and method, with the unregularized forgetting."""
    tab = Table(
        "forgetting_reduction",
        "Forgetting reduction",
        (
            "Tier",
            "Method",
            "Forgetting reduction (%)",
            "Permutations",
            "None's forgetting, mean (%)",
            "Per permutation (%)",
            "Flagged",
        ),
        note="1 − PercΔ_method(A) / PercΔ_none(A), averaged over permutations (task A: "
        "the first of the order). None's forgetting is −PercΔ_none(A). Flagged: "
        f"permutations where none forgets < {SMALL_FORGETTING:g}% (noisy ratio, "
        "'small') or nothing ('undefined', left out of the mean).",
    )
    for tier in (2, 3):
        rows = r.rows(tier)
        none = {o: r.chosen_row(tier, o, m)[1] for o, m, _ in rows if m == "none"}
        for m in r.methods:
            if m == "none":
                continue
            perms = [
                o
                for o, mm, _ in rows
                if mm == m and o in none and math.isfinite(none[o])
            ]
            pm = [r.chosen_row(tier, o, m)[1] for o in perms]
            if not perms or not all(math.isfinite(x) for x in pm):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fr = forgetting_reduction(
                    pm, [none[o] for o in perms], small_forgetting=SMALL_FORGETTING
                )
            names = ["→".join(o) for o in perms]
            flags = [f"{names[i]} small" for i in fr.small]
            flags += [f"{names[i]} undefined" for i in fr.undefined]
            per = "; ".join(
                f"{n} {_fmt(v)}" for n, v in zip(names, fr.per_permutation, strict=True)
            )
            tab.rows.append(
                [
                    tier,
                    m,
                    fr.percent,
                    len(perms),
                    float(np.mean(fr.none_forgetting)),
                    per,
                    ", ".join(flags),
                ]
            )
    return tab


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
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json, not a run directory")
    out = Path(out) if out is not None else run_dir / "report"
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    metrics = run_dir / "metrics.jsonl"
    records = (
        [
            json.loads(x)
            for x in metrics.read_text(encoding="utf-8").splitlines()
            if x.strip()
        ]
        if metrics.is_file()
        else []
    )
    dones = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((run_dir / "cells").glob("*/done.json"))
    ]
    results = RunResults(config, records)
    tables = build_tables(results)
    written = [_write(out / f"{t.name}.csv", t.csv()) for t in tables]
    pngs = _figures(results, out) if figures else []
    written += pngs
    failed = [d for d in dones if d.get("status") != "ok"]
    seconds: dict[str, float] = defaultdict(float)
    for d in dones:
        seconds[d["kind"]] += float(d.get("seconds", 0.0))
    lines = [
        f"# Run {config['name']}",
        "",
        f"Tasks: {', '.join(results.tasks)}; methods: {', '.join(results.methods)}; "
        f"seeds: {config['seeds']}; {len(records)} evaluations, {len(dones)} cells.",
        "",
    ]
    lines += [t.markdown() for t in tables]
    lines += ["## Failed cells", ""]
    lines += [f"- {d['id']}: {d.get('message')}" for d in failed] or ["None failed."]
    lines += ["", "## Wall time per kind of cell (s, summed over cells)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in sorted(seconds.items())]
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in pngs]
    written.append(_write(out / "report.md", "\n".join(lines) + "\n"))
    return written


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


def _matrix_table(r: RunResults) -> Table:
    """The accuracy matrices as rows: order, method, after which task, accuracies."""
    tab = Table(
        "accuracy_matrix",
        "Accuracy matrices (test, %; row: after training on)",
        ("Order", "Method", "After", "Task 1", "Task 2", "Task 3"),
    )
    for (order, m), mat in accuracy_matrices(r).items():
        for i, row in enumerate(mat):
            cells = [float(x) for x in row] + [math.nan] * (3 - len(row))
            tab.rows.append([" → ".join(order), m, order[i], *cells])
    return tab


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _lam(lam: Any) -> str | None:
    """λ as text: ``1e+03``, one value per prior task joined by ``/``."""
    if lam is None:
        return None
    lams = lam if isinstance(lam, tuple | list) else (lam,)
    return "/".join(f"{float(x):.3g}" for x in lams)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any) -> str:
    if _missing(v):
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
