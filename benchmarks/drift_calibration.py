"""How well the drift probe predicts the old task's accuracy drop, beside the quadratic.

Every tier-2 cell of a run records ``drift`` (``training.drift``: pseudo-queries from
the old task A's dictionary, the start model against the trained one) and the penalty's
``predicted_rise`` (½ΔᵀF_AΔ). Measured: A's test accuracy drop (individual − after,
points) and A's test loss rise. For the penalized cells (and for all, plain fine-tuning
included) this prints Spearman's ρ, pooled and the mean within a pair:

- probe: its raw drop (eq. D1 with scale 1) against the measured accuracy drop;
- quadratic: ``predicted_rise`` against the measured loss rise (what the budget claims)
  and against the measured accuracy drop;

and the ratio predicted / measured of the probe's drop in points, median and range,
with the calibration constant fitted on other data than the pair it is scored on: each
pair's scale is the ratio of sums Σ measured drop / Σ probe drop over the *other*
pairs' cells (leave one pair out), once from their dev drops and once from their test
drops (a fold of pairs); no number of the pair itself chooses it. The scale of all
pairs is printed last. The probe's other statistics
(``disagreement``, ``forgotten``) are ranked beside it, on dev (where a statistic
may be chosen) and on test (to report, not to choose).

    python benchmarks/drift_calibration.py RUN_DIR [RUN_DIR ...] [--min-drop 1]

Several run directories are pooled (a pair's cells of every seed are one group).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from statistics import median
from typing import Any

from kfacel.experiments.metrics import spearman
from kfacel.experiments.results import cell_record, finished_cells


def points(run_dir: str) -> list[dict[str, Any]]:
    """One row per tier-2 cell with a probe: its estimates and A's measured changes."""
    dones = finished_cells(run_dir)
    ind = {
        (d["order"][0], d["seed"]): d for d in dones if d.get("kind") == "individual"
    }
    out = []
    for d in dones:
        a = d["order"][0]
        if d.get("kind") != "tier2" or "drift" not in d or (a, d["seed"]) not in ind:
            continue
        before, probe = ind[(a, d["seed"])], d["drift"]
        row = {
            "pair": "→".join(d["order"]),
            "method": d["method"],
            "lam": d["lam"],
            "probe": probe["accuracy_old"] - probe["accuracy_new"],
            "disagreement": probe["disagreement"],
            "forgotten": probe["forgotten"],
            "quadratic": (d.get("predicted_rise") or {}).get(a),
        }
        for split in ("dev", "test"):
            old, new = cell_record(before, a, split), cell_record(d, a, split)
            row[f"drop_{split}"] = old["accuracy"] - new["accuracy"]
            row[f"rise_{split}"] = new.get("loss", float("nan")) - old.get(
                "loss", float("nan")
            )
        out.append(row)
    return out


def rho(rows: list[dict[str, Any]], x: str, y: str) -> tuple[float, float]:
    """Spearman's ρ of ``x`` against ``y``: pooled, and the mean within a pair."""
    rows = [r for r in rows if r[x] is not None]
    pooled = spearman([r[x] for r in rows], [r[y] for r in rows])
    by_pair: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_pair[r["pair"]].append(r)
    within = [
        spearman([r[x] for r in v], [r[y] for r in v])
        for v in by_pair.values()
        if len(v) >= 3
    ]
    within = [w for w in within if w == w]
    return pooled, (sum(within) / len(within) if within else float("nan"))


def fitted_scale(rows: list[dict[str, Any]], source: str = "drop_dev") -> float:
    """Σ measured drop / Σ probe drop over ``rows``: the constant of eq. D1."""
    probe = sum(r["probe"] for r in rows)
    return sum(r[source] for r in rows) / probe if probe > 0 else float("nan")


def ratio_summary(
    rows: list[dict[str, Any]],
    penalized: list[dict[str, Any]],
    source: str,
    min_drop: float,
) -> None:
    """Estimate / measured test drop, each pair's scale fitted on the other pairs."""
    for r in rows:
        r["estimate"] = r["probe"] * fitted_scale(
            [o for o in rows if o["pair"] != r["pair"]], source
        )
    for name, sub in (("all", rows), ("penalized", penalized)):
        ratios = [
            r["estimate"] / r["drop_test"] for r in sub if r["drop_test"] >= min_drop
        ]
        ratios = [q for q in ratios if q == q]  # NaN: the other pairs give no scale
        if not ratios:
            print(f"{name} cells, scale from the other pairs' {source}: none defined")
            continue
        within = sum(0.5 <= q <= 2.0 for q in ratios)
        print(
            f"{name} cells, scale from the other pairs' {source}: estimate / measured "
            f"test drop over {len(ratios)} cells with a drop ≥ {min_drop:g}: median "
            f"{median(ratios):.2f}, range {min(ratios):.2f}–{max(ratios):.2f}, within "
            f"2× {within}/{len(ratios)}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--min-drop",
        type=float,
        default=1.0,
        help="ratios only where the measured test drop is at least this (points)",
    )
    args = p.parse_args()
    rows = [row for run_dir in args.run_dirs for row in points(run_dir)]
    print(
        "| pair | method | λ | probe raw | disagree | forgotten | quadratic | dev drop | test drop | test rise |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["pair"], r["method"], r["lam"] or 0)):
        quad = "–" if r["quadratic"] is None else f"{r['quadratic']:.3g}"
        print(
            f"| {r['pair']} | {r['method']} | {r['lam'] if r['lam'] is not None else '–'} "
            f"| {r['probe']:.1f} | {r['disagreement']:.1f} | {r['forgotten']:.1f} | {quad} | {r['drop_dev']:.1f} "
            f"| {r['drop_test']:.1f} | {r['rise_test']:.3f} |"
        )
    penalized = [r for r in rows if r["method"] != "none"]
    print("\nSpearman ρ (pooled / mean within a pair)")
    print("| estimate | against | penalized cells | all cells |")
    print("|---|---|---|---|")
    for x, y in (
        ("probe", "drop_test"),
        ("quadratic", "rise_test"),
        ("quadratic", "drop_test"),
        ("disagreement", "drop_test"),
        ("forgotten", "drop_test"),
        ("probe", "drop_dev"),
        ("disagreement", "drop_dev"),
        ("forgotten", "drop_dev"),
    ):
        cols = [rho(sub, x, y) for sub in (penalized, rows)]
        text = " | ".join(
            f"{a:.2f} / {b:.2f} (n={n})"
            for (a, b), n in zip(
                cols,
                (
                    sum(r[x] is not None for r in penalized),
                    sum(r[x] is not None for r in rows),
                ),
                strict=True,
            )
        )
        print(f"| {x} | {y} | {text} |")
    for source in ("drop_dev", "drop_test"):
        ratio_summary(rows, penalized, source, args.min_drop)
    print(
        f"scale over all pairs: {fitted_scale(rows):.3f} from dev, "
        f"{fitted_scale(rows, 'drop_test'):.3f} from test (reported, not chosen on)"
    )


if __name__ == "__main__":
    main()
