"""The claims of a hand-written run against values computed by hand.

Three tasks, four tier-2 orders, three seeds, KFC over the grid {1, 10}. Individual
test accuracy: A 80, B 90, C 70; plain fine-tuning's new-task test accuracy 80 and
new-task dev accuracy 80 everywhere (tolerance 2 points). What plain fine-tuning forgot
of the old task (test, points): A→B 20, A→C 10, B→A 4, C→A 10, 10, 0.2 (seed 2: below
the 0.5-point guard, so C→A has no reduction).

Dev (old, new) per value, the same each seed, so the in-sample choices are A→B 10,
A→C 10, B→A 1 (10 costs B→A's new task 10 points), C→A 10. Cross-fitting: folds
{A→B, B→A} and {A→C, C→A}; fold 1 averages to (55, 80) at 1 and (66, 74.5) at 10, so
it chooses 1; fold 2 chooses 10. Out of sample: A→B and B→A at 10, A→C and C→A at 1.
"""

from __future__ import annotations

import json

import pytest

from kfacel.experiments.claims import (
    build_claims,
    config_digest,
    provenance,
    results_document,
)
from kfacel.experiments.results import RunResults

INDIVIDUAL = {"A": 80.0, "B": 90.0, "C": 70.0}
NONE_OLD = {  # order -> plain fine-tuning's old-task test accuracy per seed
    ("A", "B"): (60.0, 60.0, 60.0),
    ("A", "C"): (70.0, 70.0, 70.0),
    ("B", "A"): (86.0, 86.0, 86.0),
    ("C", "A"): (60.0, 60.0, 69.8),
}
KFAC_OLD = {  # (order, value) -> KFC's old-task test accuracy per seed
    (("A", "B"), 10.0): (70.0, 72.0, 74.0),  # reductions 50, 60, 70
    (("A", "B"), 1.0): (65.0, 65.0, 65.0),  # 25
    (("A", "C"), 10.0): (74.0, 75.0, 76.0),  # 40, 50, 60
    (("A", "C"), 1.0): (71.0, 71.0, 71.0),  # 10
    (("B", "A"), 1.0): (90.0, 90.0, 90.0),  # 100
    (("B", "A"), 10.0): (88.0, 88.0, 88.0),  # 50
    (("C", "A"), 10.0): (65.0, 65.0, 65.0),
    (("C", "A"), 1.0): (65.0, 65.0, 65.0),
}
KFAC_NEW = {
    (("C", "A"), 10.0): 77.0,
    (("B", "A"), 1.0): 80.0,
}  # others 79 at 10, 80 at 1
DEV = {  # (order, value) -> (old dev, new dev)
    (("A", "B"), 1.0): (50.0, 80.0),
    (("A", "B"), 10.0): (70.0, 79.0),
    (("B", "A"), 1.0): (60.0, 80.0),
    (("B", "A"), 10.0): (62.0, 70.0),
    (("A", "C"), 1.0): (50.0, 80.0),
    (("A", "C"), 10.0): (70.0, 79.0),
    (("C", "A"), 1.0): (50.0, 80.0),
    (("C", "A"), 10.0): (70.0, 79.0),
}
SEEDS = (0, 1, 2)


def _rec(kind, order, method, lam, task, split, acc, seed):
    tier = 1 if kind == "individual" else 2
    return {"kind": kind, "tier": tier, "order": list(order), "method": method,
            "lam": lam, "task": task, "split": split, "accuracy": acc, "seed": seed}  # fmt: skip


def _records(skip_seed_on=None):
    out = []
    for s in SEEDS:
        for t, acc in INDIVIDUAL.items():
            out += [_rec("individual", [t], "none", None, t, x, acc, s) for x in ("test", "dev")]  # fmt: skip
        for o, accs in NONE_OLD.items():
            out += [
                _rec("tier2", o, "none", None, o[0], "test", accs[s], s),
                _rec("tier2", o, "none", None, o[1], "test", 80.0, s),
                _rec("tier2", o, "none", None, o[0], "dev", 60.0, s),
                _rec("tier2", o, "none", None, o[1], "dev", 80.0, s),
            ]
        for (o, v), accs in KFAC_OLD.items():
            if (o, s) == skip_seed_on:
                continue
            new = KFAC_NEW.get((o, v), 79.0 if v == 10.0 else 80.0)
            out += [
                _rec("tier2", o, "kfac", v, o[0], "test", accs[s], s),
                _rec("tier2", o, "kfac", v, o[1], "test", new, s),
                _rec("tier2", o, "kfac", v, o[0], "dev", DEV[(o, v)][0], s),
                _rec("tier2", o, "kfac", v, o[1], "dev", DEV[(o, v)][1], s),
            ]
    return out


CONFIG = {
    "name": "toy",
    "tasks": [{"name": t} for t in INDIVIDUAL],
    "methods": ["none", "kfac"],
    "penalty": {"new_task_tolerance": 2.0},
}


@pytest.fixture(scope="module")
def claims():
    return {c.id: c.to_json() for c in build_claims(RunResults(CONFIG, _records()))}


T2 = 4.3026527  # Student-t 0.975 quantile, 2 degrees of freedom


@pytest.mark.parametrize(
    ("claim", "per_seed"),
    [
        # A→B, A→C, B→A; C→A guarded out
        ("tier2/kfac/reduction/in-sample", [190 / 3, 70.0, 230 / 3]),
        ("tier2/kfac/reduction-median/in-sample", [50.0, 60.0, 70.0]),
        ("tier2/kfac/reduction-forgot5/in-sample", [45.0, 55.0, 65.0]),  # no B→A
        ("tier2/kfac/new-task-cost/in-sample", [1.25, 1.25, 1.25]),  # 1, 1, 0, 3
        ("tier2/kfac/reduction/out-of-sample", [110 / 3, 40.0, 130 / 3]),
        ("tier2/kfac/new-task-cost/out-of-sample", [0.5, 0.5, 0.5]),  # 1, 1, 0, 0
        ("tier2/none/forgetting-points/fixed", [11.0, 11.0, 8.55]),
    ],
)
def test_claims_per_seed_value_and_intervals_by_hand(claims, claim, per_seed) -> None:
    c = claims[claim]
    assert [x["seed"] for x in c["per_seed"]] == list(SEEDS)
    assert [x["value"] for x in c["per_seed"]] == pytest.approx(per_seed)
    mean = sum(per_seed) / 3
    sd = (sum((x - mean) ** 2 for x in per_seed) / 2) ** 0.5
    assert c["value"] == pytest.approx(mean)
    assert c["interval"] == pytest.approx(
        [mean - T2 * sd / 3**0.5, mean + T2 * sd / 3**0.5], abs=1e-5
    )
    assert c["seeds"] == 3
    lo, hi = c["bootstrap"]
    assert min(per_seed) - 1e-9 <= lo <= mean <= hi <= max(per_seed) + 1e-9


def test_guarded_and_small_forgetting_are_named_not_divided(claims) -> None:
    red = claims["tier2/kfac/reduction/in-sample"]
    assert red["left_out"] == {
        "C→A": "plain fine-tuning forgot < 0.5 points (seed 2: 0.20)"
    }
    assert red["per_permutation"]["C→A"]["reduction"] is None
    assert red["per_permutation"]["C→A"]["reduction_per_seed"]["2"] is None
    assert red["per_permutation"]["A→B"] | {"reduction_per_seed": None} == {
        "value": 10.0,
        "reduction": pytest.approx(60.0),
        "reduction_per_seed": None,
        "none_forgetting_points": pytest.approx(20.0),
        "none_forgetting_percent": pytest.approx(25.0),
        "new_task_cost": pytest.approx(1.0),
    }
    five = claims["tier2/kfac/reduction-forgot5/in-sample"]["left_out"]
    assert five["B→A"] == (
        "plain fine-tuning forgot < 5 points (seed 0: 4.00, seed 1: 4.00, seed 2: 4.00)"
    )


def test_out_of_sample_selection_is_recorded(claims) -> None:
    sel = claims["tier2/kfac/reduction/out-of-sample"]["selection"]
    assert sel["folds"] == [["A→B", "B→A"], ["A→C", "C→A"]]
    assert [
        (c["chosen_on_fold"], c["value"], c["admissible"]) for c in sel["chosen"]
    ] == [
        (1, 1.0, True),
        (2, 10.0, True),
    ]
    assert sel["value_for"] == {"A→B": 10.0, "A→C": 1.0, "B→A": 10.0, "C→A": 1.0}
    ins = claims["tier2/kfac/reduction/in-sample"]["selection"]["value_for"]
    assert ins == {"A→B": 10.0, "A→C": 10.0, "B→A": 1.0, "C→A": 10.0}


def test_a_seed_missing_a_permutation_is_left_out_and_named() -> None:
    records = _records(skip_seed_on=(("A", "C"), 1))
    claims = {c.id: c.to_json() for c in build_claims(RunResults(CONFIG, records))}
    c = claims["tier2/kfac/reduction/in-sample"]
    assert [x["seed"] for x in c["per_seed"]] == [0, 2]
    assert c["left_out"]["seed 1"] == "missing on A→C"
    assert c["bootstrap"] is None  # two seeds
    assert c["interval_note"].startswith("2 seeds: t interval only")


def test_one_seed_gives_no_interval() -> None:
    records = [r for r in _records() if r["seed"] == 0]
    claims = {c.id: c.to_json() for c in build_claims(RunResults(CONFIG, records))}
    c = claims["tier2/kfac/reduction/in-sample"]
    # seed 0 alone: C→A forgot 10 points there, so it counts (reduction 50)
    assert c["value"] == pytest.approx((50 + 40 + 100 + 50) / 4)
    assert (c["interval"], c["bootstrap"], c["seeds"]) == (None, None, 1)
    assert c["interval_note"] == "1 seed(s): no interval, no bootstrap"


def test_results_document_digest_and_provenance() -> None:
    env = {
        "sessions": [
            {"started": "s1", "git_commit": "abc", "device_name": "x86_64",
             "cpu_count": 2, "device": "cpu", "packages": {"torch": "2.5"}},
            {"started": "s2", "git_commit": "def", "device_name": "EPYC",
             "cpu_count": 16, "device": "cpu", "packages": {"torch": "2.6"}},
        ]
    }  # fmt: skip
    prov = provenance(env)
    assert prov["commit"] == "def"
    assert (prov["machine"]["cpu"], prov["machine"]["torch"]) == ("EPYC", "2.6")
    assert [s["commit"] for s in prov["sessions"]] == ["abc", "def"]
    doc = results_document(CONFIG, env, build_claims(RunResults(CONFIG, _records())))
    json.dumps(doc, allow_nan=False)  # strict JSON
    assert doc["run"] == "toy"
    assert doc["config_digest"] == config_digest(dict(reversed(CONFIG.items())))
    assert doc["config_digest"] != config_digest({**CONFIG, "name": "other"})


def test_doctests() -> None:
    import doctest

    from kfacel.experiments import claims as module

    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
