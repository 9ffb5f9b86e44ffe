"""The tables of a run, in the form of the paper's, as Markdown and CSV.

- **Table 1** baselines: every method on the first permutation (task A accuracy and
  Perc Δ; the paper ran it on 10% samples: the ``-small`` configs),
- **Table 2** individual vs combined training,
- **Table 3** tier 2: accuracy and Perc Δ on tasks A and B, per permutation and method,
- **Table 4** tier 3: the same on tasks A, B and C,
- **Table 6** the λ chosen on dev,
- the **forgetting reduction** of every method against plain fine-tuning (its mean,
  median and mean where plain fine-tuning forgot ≥ 5 points), with the unregularized
  forgetting beside it and the new-task cost, per selection (``claims.py``),
- the **claims** of ``results.json`` with their intervals over seeds,
- **head to head**: in how many permutations one method keeps task A better than
  another,
- the accuracy matrices.

Rows use the λ chosen on dev (``sweep.choose``) and report test accuracies, averaged
over seeds; Perc Δ is against the task's individual (tier-1) test accuracy.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfacel.experiments import sweep
from kfacel.experiments.claims import FORGOT, Claim, build_claims
from kfacel.experiments.metrics import MIN_FORGETTING, spearman
from kfacel.experiments.results import RunResults, accuracy_matrices


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
            lines += [
                "",
                "No rows in this run: they need tier 2 or a later tier, and a method "
                "with a λ chosen (see “Left out”).",
            ]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The table as CSV (full precision, empty for NaN/None)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        for row in self.rows:
            writer.writerow(["" if _missing(v) else v for v in row])
        return buf.getvalue()


def build_tables(
    results: RunResults,
    calibration: Sequence[Mapping[str, Any]] = (),
    claims: Sequence[Claim] | None = None,
) -> list[Table]:
    """Tables 1–4 and 6, forgetting reduction, claims, head to head, accuracy matrices.

    ``claims`` defaults to ``build_claims(results)``.
    """
    r = results
    claims = build_claims(r) if claims is None else claims
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
    tables.append(_forgetting_table(claims))
    tables.append(_claims_table(claims))
    if calibration:
        tables.append(_calibration_table(calibration))
    tables.append(_head_to_head_table(r))
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


def _forgetting_table(claims: Sequence[Claim]) -> Table:
    """Forgetting reduction per tier, method and selection, from the run's claims."""
    tab = Table(
        "forgetting_reduction",
        "Forgetting reduction",
        (
            "Tier",
            "Method",
            "Selection",
            "Reduction, mean (%)",
            "Median (%)",
            f"Mean where none forgot ≥ {FORGOT:g} points (%)",
            "Permutations",
            "None's forgetting, mean (points)",
            "None's forgetting, mean (%)",
            "New-task cost, mean (points)",
            "Per permutation (%)",
            "Left out",
        ),
        note="Reduction of the old task's (task A's) forgetting, per permutation "
        "(individual − none: what plain fine-tuning forgot; (method − none) / "
        "(individual − none) × 100 = 1 − PercΔ_method / PercΔ_none), test, at the value "
        "the selection gives (docs/experiments.md); mean over seeds of the statistic "
        "over permutations. No reduction where plain fine-tuning forgot < "
        f"{MIN_FORGETTING:g} points (named under Left out). New-task cost: none's test "
        "accuracy on the last task minus the method's, in points.",
    )
    by_id = {c.id: c for c in claims}
    for c in claims:
        if c.metric != "reduction" or c.method == "none":
            continue
        key = f"tier{c.tier}/{c.method}/{{}}/{c.selection_kind}"
        median, forgot5, cost = (
            by_id.get(key.format(m)) for m in
            ("reduction-median", "reduction-forgot5", "new-task-cost")
        )  # fmt: skip
        perms = c.per_permutation
        none_pts = [x["none_forgetting_points"] for x in perms.values()]
        none_pc = [x["none_forgetting_percent"] for x in perms.values()]
        per = "; ".join(f"{n} {_fmt(x['reduction'])}" for n, x in perms.items())
        left = "; ".join(f"{k}: {v}" for k, v in c.left_out.items())
        tab.rows.append(
            [c.tier, c.method, c.selection_kind, c.value,
             median.value if median else None, forgot5.value if forgot5 else None,
             len(perms), _mean_or_nan(none_pts), _mean_or_nan(none_pc),
             cost.value if cost else None, per, left]
        )  # fmt: skip
    return tab


def _claims_table(claims: Sequence[Claim]) -> Table:
    """Every claim of ``results.json`` with its intervals over seeds."""
    tab = Table(
        "claims",
        "Claims (results.json)",
        ("Claim", "Value", "95% t interval", "95% bootstrap", "Seeds"),
        note="Per seed the statistic over the permutations; the value is the mean over "
        "seeds, the t interval Student's over seeds, the bootstrap a cluster bootstrap "
        "over seeds (10,000 draws, fixed seed; ≥ 3 seeds). One seed: no interval.",
    )
    for c in claims:
        j = c.to_json()
        tab.rows.append(
            [c.id, c.value, _pair(j["interval"]), _pair(j["bootstrap"]), j["seeds"]]
        )
    return tab


def _pair(x: list[float] | None) -> str | None:
    return None if x is None else f"[{x[0]:.2f}, {x[1]:.2f}]"


def _mean_or_nan(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def _calibration_table(points: Sequence[Mapping[str, Any]]) -> Table:
    """Does the penalty predict forgetting? Rank correlation and ratio per method."""
    tab = Table(
        "calibration",
        "Predicted against measured rise of the old task's loss",
        ("Method", "Cells", "Spearman ρ", "Median predicted / measured"),
        note="Per tier-2 cell with a penalty: predicted ½ΔᵀF_AΔ (λ = 1) against the "
        "measured rise of task A's mean test cross-entropy over its individual model. "
        "The median ratio is over cells whose measured rise is positive.",
    )
    methods = sorted({str(p["method"]) for p in points})
    for m in methods:
        pts = [p for p in points if p["method"] == m]
        pred = [float(p["predicted"]) for p in pts]
        meas = [float(p["measured"]) for p in pts]
        ratios = [a / b for a, b in zip(pred, meas, strict=True) if b > 0]
        median = float(np.median(ratios)) if ratios else math.nan
        tab.rows.append([m, len(pts), spearman(pred, meas), median])
    return tab


def _head_to_head_table(r: RunResults) -> Table:
    """Per tier: permutations where the row method keeps task A better than the column."""
    tab = Table(
        "head_to_head",
        "Head to head on task A",
        ("Tier", "Method", *r.methods),
        note="k/n: in k of the n permutations both methods ran, the row method's task-A "
        "test accuracy (at its λ chosen on dev) is higher than the column method's.",
    )
    for tier in (2, 3):
        acc_a = {(o, m): r.chosen_row(tier, o, m)[0] for o, m, _ in r.rows(tier)}
        orders = sorted({o for o, _ in acc_a}, key=str)
        present = [m for m in r.methods if any((o, m) in acc_a for o in orders)]
        for m in present:
            cells: list[Any] = []
            for other in r.methods:
                both = [o for o in orders if (o, m) in acc_a and (o, other) in acc_a]
                if other == m or not both:
                    cells.append(None)
                    continue
                wins = sum(acc_a[(o, m)] > acc_a[(o, other)] for o in both)
                cells.append(f"{wins}/{len(both)}")
            tab.rows.append([tier, m, *cells])
    return tab


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
