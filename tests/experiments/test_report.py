"""The report of a hand-written run directory: the paper's CNN numbers (Tables 2–3).

The run holds the paper's CNN accuracies (McInerney et al. 2021, Tables 2 and 3) as
test records, dev records that make λ = 1e3 the choice for EWC and KFC (1e9 costs the
new task too much, 1e1 keeps less of the old one), and one failed cell. The report must
give the paper's Perc Δ, and its forgetting reduction 74.5% (KFC) and 34.7% (EWC).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kfacel.experiments.report import write_report

INDIVIDUAL = {"medm": 76.75, "3dnotes": 77.89, "mednorm": 88.47}
COMBINED = {"medm": 76.26, "3dnotes": 78.34, "mednorm": 89.55}
TABLE3 = {  # (A, B): method -> (acc A, acc B), CNN columns
    ("medm", "3dnotes"): {
        "none": (41.35, 77.54),
        "ewc": (55.41, 75.81),
        "kfac": (68.55, 74.05),
    },
    ("medm", "mednorm"): {
        "none": (48.55, 89.75),
        "ewc": (56.98, 90.07),
        "kfac": (73.93, 90.09),
    },
    ("3dnotes", "medm"): {
        "none": (46.48, 77.04),
        "ewc": (55.29, 76.67),
        "kfac": (66.18, 74.13),
    },
    ("3dnotes", "mednorm"): {
        "none": (47.13, 90.78),
        "ewc": (58.42, 86.38),
        "kfac": (72.13, 88.95),
    },
    ("mednorm", "medm"): {
        "none": (49.59, 75.93),
        "ewc": (67.74, 73.20),
        "kfac": (74.59, 74.39),
    },
    ("mednorm", "3dnotes"): {
        "none": (55.81, 76.73),
        "ewc": (64.60, 75.89),
        "kfac": (79.22, 74.68),
    },
}
DEV = {1e1: (50.0, 80.0), 1e3: (70.0, 79.0), 1e9: (90.0, 40.0)}  # λ -> (old, new)


def _rec(kind, tier, order, method, lam, split, task, acc):
    return {
        "kind": kind,
        "tier": tier,
        "order": list(order),
        "method": method,
        "lam": lam,
        "seed": 0,
        "split": split,
        "task": task,
        "accuracy": acc,
        "mrr": acc / 100,
        "n": 100,
        "cell": f"{kind}-{'-'.join(order)}-{method}-{lam}",
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    config = {
        "name": "paper-cnn-table3",
        "tasks": [{"name": t, "path": t} for t in INDIVIDUAL],
        "methods": ["none", "ewc", "kfac"],
        "seeds": [0],
        "penalty": {"new_task_tolerance": 2.0},
    }
    (run / "config.json").write_text(json.dumps(config))
    recs = []
    for t, acc in INDIVIDUAL.items():
        recs += [
            _rec("individual", 1, [t], "none", None, s, t, acc) for s in ("dev", "test")
        ]
        recs += [
            _rec("combined", 1, list(INDIVIDUAL), "none", None, s, t, COMBINED[t])
            for s in ("dev", "test")
        ]
    for (a, b), rows in TABLE3.items():
        for method, (acc_a, acc_b) in rows.items():
            for lam, (old, new) in (
                DEV.items() if method != "none" else [(None, (60, 80))]
            ):
                chosen = lam in (None, 1e3)
                recs += [
                    _rec("tier2", 2, (a, b), method, lam, "dev", a, old),
                    _rec("tier2", 2, (a, b), method, lam, "dev", b, new),
                    _rec(
                        "tier2",
                        2,
                        (a, b),
                        method,
                        lam,
                        "test",
                        a,
                        acc_a if chosen else 1.0,
                    ),
                    _rec(
                        "tier2",
                        2,
                        (a, b),
                        method,
                        lam,
                        "test",
                        b,
                        acc_b if chosen else 1.0,
                    ),
                ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    failed = run / "cells" / "tier2-medm-3dnotes-kfac-1e+30-s0"
    failed.mkdir(parents=True)
    (failed / "done.json").write_text(
        json.dumps(
            {
                "id": failed.name,
                "kind": "tier2",
                "status": "failed",
                "seconds": 1.5,
                "message": "FloatingPointError: the penalty is inf",
                "records": [],
            }
        )
    )
    write_report(run, figures=False)
    return run / "report"


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def test_table3_has_the_papers_perc_delta_at_the_chosen_lambda(report) -> None:
    rows = {(r["Perm."], r["Method"]): r for r in _csv(report / "table3.csv")}
    assert len(rows) == 18
    for (a, b), methods in TABLE3.items():
        for method, (acc_a, acc_b) in methods.items():
            row = rows[(f"{a} → {b}", method)]
            assert row["λ"] == ("" if method == "none" else "1e+03")
            assert float(row["Task A Acc."]) == acc_a
            assert float(row["Task B Acc."]) == acc_b
            want = (acc_a - INDIVIDUAL[a]) / INDIVIDUAL[a] * 100
            assert float(row["Task A Perc. Δ"]) == pytest.approx(want)
    # the paper's printed values, to its two decimals
    assert float(rows[("medm → 3dnotes", "none")]["Task A Perc. Δ"]) == pytest.approx(
        -46.12, abs=5e-3
    )
    assert float(rows[("mednorm → medm", "kfac")]["Task A Perc. Δ"]) == pytest.approx(
        -15.68,
        abs=1e-2,  # the paper truncates -15.689
    )


def _reduction_rows(report: Path) -> dict[tuple[str, str], dict[str, str]]:
    rows = _csv(report / "forgetting_reduction.csv")
    return {(r["Method"], r["Selection"]): r for r in rows}


def test_forgetting_reduction_is_the_papers(report) -> None:
    rows = _reduction_rows(report)
    # every permutation's dev sets choose 1e3: in and out of sample agree
    for selection in ("in-sample", "out-of-sample"):
        kfac, ewc = rows[("kfac", selection)], rows[("ewc", selection)]
        assert float(kfac["Reduction, mean (%)"]) == pytest.approx(74.5, abs=0.05)
        assert float(ewc["Reduction, mean (%)"]) == pytest.approx(34.7, abs=0.05)
    none_mean = (46.12 + 36.75 + 40.32 + 39.49 + 43.95 + 36.92) / 6
    kfac = rows[("kfac", "in-sample")]
    assert float(kfac["None's forgetting, mean (%)"]) == pytest.approx(
        none_mean, abs=0.01
    )
    points = sum(INDIVIDUAL[a] - r["none"][0] for (a, _), r in TABLE3.items()) / 6
    assert float(kfac["None's forgetting, mean (points)"]) == pytest.approx(points)
    assert kfac["Permutations"] == "6"
    assert kfac["Left out"] == ""
    # KFC per permutation (points kept / points forgotten), sorted: the median
    kept = sorted(
        (r["kfac"][0] - r["none"][0]) / (INDIVIDUAL[a] - r["none"][0]) * 100
        for (a, _), r in TABLE3.items()
    )
    assert float(kfac["Median (%)"]) == pytest.approx((kept[2] + kept[3]) / 2)


def test_results_json_holds_every_claim_with_its_provenance(report) -> None:
    doc = json.loads((report / "results.json").read_text(encoding="utf-8"))
    assert doc["run"] == "paper-cnn-table3"
    assert len(doc["config_digest"]) == 64
    assert (doc["commit"], doc["machine"]) == (None, None)  # no env.json
    by_id = {c["id"]: c for c in doc["claims"]}
    c = by_id["tier2/kfac/reduction/out-of-sample"]
    assert c["value"] == pytest.approx(74.5, abs=0.05)
    assert (c["interval"], c["bootstrap"], c["seeds"]) == (None, None, 1)
    assert c["selection"]["folds"][0] == [
        "3dnotes→medm", "medm→3dnotes", "mednorm→3dnotes"
    ]  # fmt: skip
    assert set(c) >= {"tier", "method", "metric", "per_permutation", "left_out"}
    assert "tier2/none/forgetting-points/fixed" in by_id


def test_tables_1_2_6_and_the_failed_cell(report) -> None:
    t1 = _csv(report / "table1.csv")
    assert [(r["Perm."], r["Method"]) for r in t1] == [
        ("medm", "individual"),
        ("medm → 3dnotes", "none"),
        ("medm → 3dnotes", "ewc"),
        ("medm → 3dnotes", "kfac"),
    ]
    t2 = {
        (r["Training"], r["Dataset"]): float(r["Acc."])
        for r in _csv(report / "table2.csv")
    }
    assert t2[("Individual", "3dnotes")] == 77.89
    assert t2[("Combined", "mednorm")] == 89.55
    t6 = _csv(report / "table6.csv")
    assert len(t6) == 12
    assert {r["Task A (tier 2)"] for r in t6} == {"1e+03"}
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "tier2-medm-3dnotes-kfac-1e+30-s0: FloatingPointError" in text
    assert "| medm → 3dnotes | kfac | 1e+03 | 68.55 | -10.68 |" in text
    mat = [
        r
        for r in _csv(report / "accuracy_matrix.csv")
        if (r["Order"], r["Method"]) == ("medm → 3dnotes", "kfac")
    ]
    assert [(r["After"], r["Task 1"], r["Task 2"]) for r in mat] == [
        ("medm", "76.75", ""),
        ("3dnotes", "68.55", "74.05"),
    ]


def test_small_and_absent_forgetting_are_named_never_divided(tmp_path) -> None:
    """Plain fine-tuning forgets a→b 2 points, b→a 40, a→c 0.3 (below the guard)."""
    run = tmp_path / "run"
    run.mkdir()
    config = {
        "name": "x",
        "tasks": [{"name": t, "path": t} for t in "abc"],
        "methods": ["none", "kfac"],
        "seeds": [0],
    }
    (run / "config.json").write_text(json.dumps(config))
    recs = [
        _rec("individual", 1, [t], "none", None, s, t, 80.0)
        for t in "abc"
        for s in ("dev", "test")
    ]
    for order, none_a in ((("a", "b"), 78.0), (("b", "a"), 40.0), (("a", "c"), 79.7)):
        for method, lam, acc in (("none", None, none_a), ("kfac", 1e3, 79.0)):
            recs += [
                _rec(
                    "tier2", 2, order, method, lam, s, t, acc if t == order[0] else 80.0
                )
                for t in order
                for s in ("dev", "test")
            ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_report(run, figures=False)
    (row,) = _csv(run / "report" / "forgetting_reduction.csv")
    assert row["Selection"] == "fixed"  # one λ: nothing chosen
    assert float(row["Reduction, mean (%)"]) == pytest.approx((50 + 97.5) / 2)
    assert float(row["Mean where none forgot ≥ 5 points (%)"]) == pytest.approx(97.5)
    assert row["Left out"] == (
        "a→c: plain fine-tuning forgot < 0.5 points (seed 0: 0.30)"
    )
    assert "a→c –" in row["Per permutation (%)"]


def test_a_method_left_out_of_every_table_is_named_with_the_reason(tmp_path) -> None:
    """KFC's every λ costs B more than 2 points of none's dev accuracy: no row."""
    run = tmp_path / "run"
    run.mkdir()
    config = {
        "name": "x",
        "tasks": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}],
        "methods": ["none", "kfac"],
        "seeds": [0],
        "tiers": [1, 2],
        "pairs": ["a>b"],
    }
    (run / "config.json").write_text(json.dumps(config))
    recs = [
        _rec("individual", 1, [t], "none", None, s, t, 80.0)
        for t in "ab"
        for s in ("dev", "test")
    ]
    for method, lam, new in (("none", None, 80.0), ("kfac", 1e3, 70.0)):
        recs += [
            _rec("tier2", 2, "ab", method, lam, s, t, 60.0 if t == "a" else new)
            for t in "ab"
            for s in ("dev", "test")
        ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_report(run, figures=False)
    assert {r["Method"] for r in _csv(run / "report" / "table3.csv")} == {"none"}
    text = (run / "report" / "report.md").read_text(encoding="utf-8")
    assert (
        "## Left out\n\n- tier 2 a→b kfac: new-task dev accuracy more than 2 points "
        "below plain fine-tuning's 80.00 at every λ (best 70.00, λ 1e+03)\n"
    ) in text


def test_new_task_cost_and_head_to_head_are_the_papers(report) -> None:
    """The paper's CNN Table 3 gives the new-task cost and KFC's wins over EWC.

    Hand-computed from TABLE3: KFC costs 1.91 points on task B, EWC 1.63; KFC keeps
    task A better than EWC in all 6 permutations.
    """
    rows = {
        m: r for (m, sel), r in _reduction_rows(report).items() if sel == "in-sample"
    }
    cost = {
        m: sum(TABLE3[p]["none"][1] - TABLE3[p][m][1] for p in TABLE3) / 6
        for m in ("ewc", "kfac")
    }
    assert cost["kfac"] == pytest.approx(11.48 / 6)
    assert cost["ewc"] == pytest.approx(9.75 / 6)
    for m in ("ewc", "kfac"):
        assert float(rows[m]["New-task cost, mean (points)"]) == pytest.approx(cost[m])
    h2h = {r["Method"]: r for r in _csv(report / "head_to_head.csv")}
    assert h2h["kfac"]["ewc"] == "6/6"
    assert h2h["ewc"]["kfac"] == "0/6"
    assert h2h["none"]["kfac"] == "0/6"
    assert h2h["kfac"]["kfac"] == ""


def test_claims_table_gives_the_interval_over_seeds_computed_by_hand() -> None:
    from kfacel.experiments.results import RunResults
    from kfacel.experiments.tables import build_tables

    def rec(kind, order, method, lam, task, acc, seed):
        return [
            {"kind": kind, "tier": 2 if kind == "tier2" else 1, "order": order,
             "method": method, "lam": lam, "task": task, "split": split,
             "accuracy": acc, "seed": seed}
            for split in ("dev", "test")
        ]  # fmt: skip

    records = []
    # seed: (individual A, none A, none B, kfac A, kfac B)
    for seed, (ind, na, nb, ka, kb) in {0: (80, 60, 70, 70, 69), 1: (80, 70, 72, 77.5, 70)}.items():  # fmt: skip
        records += rec("individual", ["A"], "none", None, "A", ind, seed)
        records += rec("tier2", ["A", "B"], "none", None, "A", na, seed)
        records += rec("tier2", ["A", "B"], "none", None, "B", nb, seed)
        records += rec("tier2", ["A", "B"], "kfac", 10.0, "A", ka, seed)
        records += rec("tier2", ["A", "B"], "kfac", 10.0, "B", kb, seed)
    config = {"tasks": [{"name": "A"}, {"name": "B"}], "methods": ["none", "kfac"]}
    tables = {t.name: t for t in build_tables(RunResults(config, records))}
    rows = {row[0]: row for row in tables["claims"].rows}
    # Reduction: seed 0 none −20 points, kfac kept 10 → 50%; seed 1 −10, kept 7.5 → 75%
    _, mean, interval, boot, n = rows["tier2/kfac/reduction/fixed"]
    assert (mean, n, boot) == (pytest.approx(62.5), 2, None)
    half = 12.7062047 * 17.6776695 / 2**0.5  # t(0.975, 1 df) · sd / √n
    assert interval == f"[{62.5 - half:.2f}, {62.5 + half:.2f}]"
    _, cost, interval, _, _ = rows["tier2/kfac/new-task-cost/fixed"]
    assert cost == pytest.approx(1.5)  # (70 − 69 + 72 − 70) / 2
    half = 12.7062047 * 0.7071068 / 2**0.5
    assert interval == f"[{1.5 - half:.2f}, {1.5 + half:.2f}]"


def test_cells_finished_since_the_last_stage_are_reported(tmp_path) -> None:
    """A running run's `metrics.jsonl` lags its cells: the report reads both."""
    run = tmp_path / "run"
    config = {
        "name": "running",
        "tasks": [{"name": "medm", "path": "medm"}],
        "methods": ["none"],
        "seeds": [0],
    }
    (run / "cells" / "individual-medm-none-s0").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("")  # no stage has ended yet
    recs = [
        _rec("individual", 1, ["medm"], "none", None, s, "medm", 61.5)
        for s in ("dev", "test")
    ]
    done = {
        "id": "individual-medm-none-s0",
        "kind": "individual",
        "status": "ok",
        "records": recs,
    }
    (run / "cells" / "individual-medm-none-s0" / "done.json").write_text(
        json.dumps(done)
    )
    write_report(run, figures=False)
    t2 = _csv(run / "report" / "table2.csv")
    assert [(r["Dataset"], r["Acc."]) for r in t2] == [("medm", "61.5")]


def _two_task_run(run: Path, name: str, kfac_a: float) -> None:
    """A hand-written run: a→b and b→a, plain fine-tuning forgets 20 points of A."""
    run.mkdir(parents=True)
    config = {
        "name": name,
        "tasks": [{"name": t, "path": t} for t in "ab"],
        "methods": ["none", "kfac"],
        "seeds": [0],
    }
    (run / "config.json").write_text(json.dumps(config))
    recs = [
        _rec("individual", 1, [t], "none", None, s, t, 80.0)
        for t in "ab"
        for s in ("dev", "test")
    ]
    for order in ("ab", "ba"):
        for method, lam, acc in (("none", None, 60.0), ("kfac", 1e3, kfac_a)):
            recs += [
                _rec("tier2", 2, order, method, lam, s, t, acc if t == order[0] else 80)
                for t in order
                for s in ("dev", "test")
            ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_an_armed_run_is_reported_arm_by_arm_and_together(tmp_path) -> None:
    run = tmp_path / "armed"
    _two_task_run(run / "product", "tiny-product", kfac_a=70.0)  # keeps 50%
    _two_task_run(run / "paper", "tiny-paper", kfac_a=75.0)  # keeps 75%
    arms = {
        "config": "configs/x.toml",
        "config_digest": "d",
        "arms": ["product", "paper"],
    }
    (run / "arms.json").write_text(json.dumps(arms))
    write_report(run, figures=False)
    for arm in ("product", "paper"):
        assert (run / arm / "report" / "report.md").is_file()
        assert (run / arm / "report" / "results.json").is_file()
    doc = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert (doc["config"], doc["config_digest"]) == ("configs/x.toml", "d")
    assert doc["arms"]["paper"]["run"] == "tiny-paper"
    by_id = {c["id"]: c for c in doc["claims"]}
    assert by_id["product/tier2/kfac/reduction/fixed"]["value"] == pytest.approx(50.0)
    assert by_id["paper/tier2/kfac/reduction/fixed"]["value"] == pytest.approx(75.0)
    assert by_id["paper/tier2/kfac/reduction/fixed"]["arm"] == "paper"
    text = (run / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# Armed run armed\n")
    assert "[product/report/report.md](product/report/report.md)" in text
    assert "| paper/tier2/kfac/reduction/fixed | 75.00 | – | – | 1 |" in text
    write_report(run, figures=False)  # its own files are rewritten
    arms["arms"].append("later")  # an arm not started yet is named, not reported
    (run / "arms.json").write_text(json.dumps(arms))
    write_report(run, figures=False)
    doc = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert doc["arms"]["later"] == {"status": "no run directory yet"}
    assert "- later: no run directory yet" in (run / "report.md").read_text()
    with pytest.raises(ValueError, match="reported in place"):
        write_report(run, tmp_path / "elsewhere", figures=False)


@pytest.mark.parametrize(
    ("arms", "foreign", "match"),
    [
        (["product", "../x"], None, "distinct directory names"),
        (["product", "product"], None, "distinct directory names"),
        ([], None, "distinct directory names"),
        (["product"], "report.md", "not an armed run's report"),
        (["product"], "results.json", "not an armed run's results"),
    ],
)
def test_an_armed_run_refuses_bad_arms_and_foreign_files(
    tmp_path, arms, foreign, match
) -> None:
    run = tmp_path / "armed"
    _two_task_run(run / "product", "tiny", kfac_a=70.0)
    (run / "arms.json").write_text(json.dumps({"config": "c", "arms": arms}))
    if foreign:
        (run / foreign).write_text("{}\n")
    with pytest.raises(ValueError, match=match):
        write_report(run, figures=False)
    if foreign:
        assert (run / foreign).read_text() == "{}\n"
