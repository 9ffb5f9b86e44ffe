"""The tables of a run, in the form of the paper's, as Markdown and CSV.

- **Table 1** baselines: every method on the first permutation (task A accuracy and
  Perc Δ; the paper ran it on 10% samples: the ``-small`` configs),
- **Table 2** individual vs combined training,
- **Table 3** tier 2: accuracy and Perc Δ on tasks A and B, per permutation and method,
- **Table 4** tier 3: the same on tasks A, B and C,
- **Table 6** the λ chosen on dev,
- the **forgetting reduction** of every method against plain fine-tuning (docs/design.md)
  with the unregularized forgetting beside it, flagging permutations where it is below
  5% (the ratio is then noisy) or absent (undefined), and the new-task cost,
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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfacel.experiments import sweep
from kfacel.experiments.metrics import forgetting_reduction, mean_interval, spearman
from kfacel.experiments.results import RunResults, accuracy_matrices

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
    results: RunResults, calibration: Sequence[Mapping[str, Any]] = ()
) -> list[Table]:
    """Tables 1–4 and 6, forgetting reduction, head to head and accuracy matrices."""
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
    if calibration:
        tables.append(_calibration_table(calibration))
    if len(r.seeds()) > 1:
        tables.append(_seeds_table(r))
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


def _forgetting_table(r: RunResults) -> Table:
    """Forgetting reduction per tier and method, with none's forgetting and new-task cost."""
    tab = Table(
        "forgetting_reduction",
        "Forgetting reduction",
        (
            "Tier",
            "Method",
            "Forgetting reduction (%)",
            "Permutations",
            "None's forgetting, mean (%)",
            "New-task cost, mean (points)",
            "Per permutation (%)",
            "Flagged",
        ),
        note="1 − PercΔ_method(A) / PercΔ_none(A), averaged over permutations (task A: "
        "the first of the order). None's forgetting is −PercΔ_none(A). New-task cost: "
        "none's test accuracy on the last task of the order minus the method's, in "
        "points, over all its permutations (negative: the method did better). Flagged: permutations where none "
        f"forgets < {SMALL_FORGETTING:g}% (noisy ratio, 'small') or nothing "
        "('undefined', left out of the mean).",
    )
    for tier in (2, 3):
        rows = {(o, m): r.chosen_row(tier, o, m) for o, m, _ in r.rows(tier)}
        none = {o: row for (o, m), row in rows.items() if m == "none"}
        for m in r.methods:
            if m == "none":
                continue
            perms = [
                o
                for (o, mm) in rows
                if mm == m and o in none and math.isfinite(none[o][1])
            ]
            pm = [rows[(o, m)][1] for o in perms]
            if not perms or not all(math.isfinite(x) for x in pm):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fr = forgetting_reduction(
                    pm, [none[o][1] for o in perms], small_forgetting=SMALL_FORGETTING
                )
            cost = [none[o][-2] - rows[(o, m)][-2] for o in perms]
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
                    float(np.mean(cost)),
                    per,
                    ", ".join(flags),
                ]
            )
    return tab


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


def _seeds_table(r: RunResults) -> Table:
    """Forgetting reduction and new-task cost per seed: mean, sd and 95% interval."""
    tab = Table(
        "forgetting_reduction_seeds",
        "Forgetting reduction over seeds",
        (
            "Tier",
            "Method",
            "Seeds",
            "Reduction, mean (%)",
            "sd",
            "95% interval",
            "New-task cost, mean (points)",
            "sd (points)",
            "95% interval (points)",
        ),
        note="Per seed, the forgetting reduction over the permutations (at the λ chosen "
        "on the seed-averaged dev sets, Perc Δ against that seed's individual model) and "
        "the mean new-task cost; then mean, sample standard deviation and a Student-t "
        "95% interval over seeds.",
    )
    for tier in (2, 3):
        orders = sorted({o for o, m, _ in r.rows(tier) if m == "none"}, key=str)
        for m in r.methods:
            if m == "none":
                continue
            reds, costs = [], []
            for seed in r.seeds():
                pairs = []
                for o in orders:
                    base = (
                        r.seed_row(tier, o, "none", seed)
                        if (o, m) in r.chosen[tier]
                        else None
                    )
                    row = r.seed_row(tier, o, m, seed) if base else None
                    if base and row and base[0] < 0:
                        pairs.append((row, base))
                if pairs:
                    reds.append(
                        100 * float(np.mean([1 - w[0] / b[0] for w, b in pairs]))
                    )
                    costs.append(float(np.mean([b[2] - w[2] for w, b in pairs])))
            if len(reds) > 1:
                tab.rows.append([tier, m, len(reds), *_spread(reds), *_spread(costs)])
    return tab


def _spread(values: list[float]) -> list[Any]:
    """Mean, sample sd and the 95% Student-t interval as text."""
    mean, sd, lo, hi = mean_interval(values)
    return [mean, sd, f"[{lo:.1f}, {hi:.1f}]"]


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
