"""The claims of a run: each reported number with its intervals over seeds.

A **claim** is one number a reader may quote, with everything needed to check it. Its
id is ``tier{t}/{method}/{metric}/{selection}``, e.g.
``tier2/kfac-budget/reduction/out-of-sample``. Metrics (definitions in ``metrics.py``
and docs/experiments.md):

- ``reduction``: the mean over permutations of the old task's forgetting reduction;
  ``reduction-median`` its median; ``reduction-forgot5`` its mean over the
  permutations where plain fine-tuning forgot at least ``FORGOT`` points;
- ``new-task-cost``: plain fine-tuning's accuracy on the last task of the order minus
  the method's, in points (negative: the method did better);
- ``forgetting-points`` and ``forgetting-percent`` (method ``none``): what plain
  fine-tuning forgot of the old task, ``individual − none`` and ``−PercΔ_none``.

Selections: ``in-sample`` (the value chosen on each permutation's own dev sets,
``sweep.choose``), ``out-of-sample`` (tier 2: two-fold cross-fitting,
``metrics.cross_fit``), ``fixed`` (a method with no grid, or a grid of one value).

Seeds are the unit: per seed, the statistic over a fixed set of permutations; the value
is the mean over seeds, with the Student-t interval and (≥ 3 seeds) the cluster
bootstrap's. A permutation where plain fine-tuning forgot less than
``metrics.MIN_FORGETTING`` points in some seed has no reduction and is left out of the
reduction claims (named, with the reason); a seed that misses a permutation of the set
is left out of the claim (named). Test accuracies throughout; choices on dev only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kfacel.experiments import sweep
from kfacel.experiments.metrics import (
    MIN_BOOTSTRAP,
    MIN_FORGETTING,
    bootstrap_interval,
    cross_fit,
    reduction,
    t_interval,
)
from kfacel.experiments.results import RunResults

FORGOT = 5.0
"""Points plain fine-tuning must forget for ``reduction-forgot5``."""

CROSS_FIT_RULE = (
    "two folds of the tier-2 permutations (sorted, alternating); on each fold's dev "
    "results (permutations and seeds averaged) one value: the best old-task dev "
    "accuracy among those whose new-task dev accuracy is within new_task_tolerance "
    "points of plain fine-tuning's (none within: the smallest new-task cost); each "
    "permutation's test numbers at the value chosen on the other fold"
)
IN_SAMPLE_RULE = (
    "per permutation, the value chosen on that permutation's own dev sets "
    "(seeds averaged; sweep.choose)"
)

Order = tuple[str, ...]
Pair = tuple[float, float, float, float, float]
"""One (permutation, seed): individual, none old, none new, method old, method new."""


@dataclass(frozen=True)
class Claim:
    """One reported number: its value over seeds and what it was computed from."""

    tier: int
    method: str
    metric: str
    selection_kind: str
    per_seed: dict[int, float]
    per_permutation: dict[str, Any] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """``tier{t}/{method}/{metric}/{selection}``."""
        return f"tier{self.tier}/{self.method}/{self.metric}/{self.selection_kind}"

    @property
    def value(self) -> float | None:
        """Mean of the per-seed values; None without any."""
        return float(np.mean(list(self.per_seed.values()))) if self.per_seed else None

    def to_json(self) -> dict[str, Any]:
        """The claim as ``results.json`` holds it (docs/experiments.md)."""
        values = list(self.per_seed.values())
        interval, boot = t_interval(values), bootstrap_interval(values)
        return {
            "id": self.id,
            "tier": self.tier,
            "method": self.method,
            "metric": self.metric,
            "value": self.value,
            "interval": list(interval) if interval else None,
            "bootstrap": list(boot) if boot else None,
            "seeds": len(values),
            "interval_note": _interval_note(len(values)),
            "per_seed": [{"seed": s, "value": v} for s, v in self.per_seed.items()],
            "per_permutation": self.per_permutation,
            "left_out": self.left_out,
            "selection": self.selection,
        }


def build_claims(r: RunResults) -> list[Claim]:
    """Every claim of the run, tier by tier (module docstring)."""
    claims: list[Claim] = []
    tol = float(r.config.get("penalty", {}).get("new_task_tolerance", 2.0))
    for tier in (2, 3):
        claims += _plain_claims(r, tier)
        for m in r.methods:
            lams = {o: lam for (o, mm), lam in r.chosen[tier].items() if mm == m}
            if m == "none" or not lams:
                continue
            kind = "in-sample" if _has_grid(r, tier, m) else "fixed"
            rule = IN_SAMPLE_RULE if kind == "in-sample" else "no value to choose"
            selection = {"rule": rule, "value_for": _keyed(lams)}
            left = {
                _name(o): "no value chosen on dev (report.md, “Left out”)"
                for (o, mm) in r.chosen[tier]
                if mm == "none" and o not in lams
            }
            claims += method_claims(r, tier, m, lams, kind, selection, left)
            if tier == 2 and kind == "in-sample":
                claims += _out_of_sample(r, m, tol)
    return claims


def method_claims(
    r: RunResults,
    tier: int,
    method: str,
    lams: Mapping[Order, Any],
    kind: str,
    selection: dict[str, Any],
    left: Mapping[str, str] | None = None,
) -> list[Claim]:
    """The four claims of ``method`` with the value ``lams[p]`` on each permutation."""
    pairs, missing = _pairs(r, tier, method, lams)
    defined, why = _forgot_everywhere(pairs, MIN_FORGETTING)
    forgot5, why5 = _forgot_everywhere({p: pairs[p] for p in defined}, FORGOT)
    per_perm = _per_permutation(pairs, lams)
    left_all = {**(left or {}), **missing}

    def claim(metric: str, stat: Callable, perms: list, out: dict) -> Claim:
        return Claim(
            tier, method, metric, kind, _per_seed(pairs, perms, stat),
            per_perm, {**left_all, **out}, selection,
        )  # fmt: skip

    return [
        claim("reduction", _mean_reduction, defined, why),
        claim("reduction-median", _median_reduction, defined, why),
        claim("reduction-forgot5", _mean_reduction, forgot5, {**why, **why5}),
        claim("new-task-cost", _mean_cost, list(pairs), {}),
    ]


def _out_of_sample(r: RunResults, method: str, tolerance: float) -> list[Claim]:
    """The method's tier-2 claims at the values chosen by two-fold cross-fitting."""
    trials = sweep.dev_trials(r.records, 2)
    ref = {o: ts[0].new_acc for (o, m), ts in trials.items() if m == "none"}
    mine = {o: ts for (o, m), ts in trials.items() if m == method and o in ref}
    try:
        cf = cross_fit(mine, ref, tolerance=tolerance)
    except ValueError as exc:
        return [
            Claim(2, method, "reduction", "out-of-sample", {},
                  left_out={"all": f"no cross-fitting: {exc}"})
        ]  # fmt: skip
    selection = {
        "rule": CROSS_FIT_RULE,
        "folds": [[_name(o) for o in f] for f in cf.folds],
        "chosen": [
            {"chosen_on_fold": k + 1, "used_on_fold": 2 - k, **asdict(c)}
            for k, c in enumerate(cf.choices)
        ],
        "value_for": _keyed(cf.value_for),
    }
    return method_claims(r, 2, method, cf.value_for, "out-of-sample", selection)


def _plain_claims(r: RunResults, tier: int) -> list[Claim]:
    """What plain fine-tuning forgot of the old task, in points and percent."""
    orders = {o: None for (o, m) in r.chosen[tier] if m == "none"}
    if not orders:
        return []
    pairs, missing = _pairs(r, tier, "none", orders)
    per_perm = {  # no method: no reduction, no cost
        name: {k: v for k, v in row.items() if k.startswith(("value", "none_"))}
        for name, row in _per_permutation(pairs, orders).items()
    }

    def points(xs: list[Pair]) -> float:
        return float(np.mean([p[0] - p[1] for p in xs]))

    def percent(xs: list[Pair]) -> float:
        return float(np.mean([100 * (p[0] - p[1]) / p[0] for p in xs]))

    return [
        Claim(tier, "none", metric, "fixed", _per_seed(pairs, list(pairs), stat),
              per_perm, missing)
        for metric, stat in (("forgetting-points", points), ("forgetting-percent", percent))
    ]  # fmt: skip


def _pairs(
    r: RunResults, tier: int, method: str, lams: Mapping[Order, Any]
) -> tuple[dict[Order, dict[int, Pair]], dict[str, str]]:
    """Per permutation and seed the five accuracies; the seeds that miss one, named.

    Only seeds complete on every permutation are kept (seeds are the unit).
    """
    kind = f"tier{tier}"
    raw: dict[Order, dict[int, Pair]] = {}
    for o, lam in sorted(lams.items()):
        a, last = o[0], o[-1]
        cols = [
            r.by_seed("individual", (a,), "none", None, a),
            r.by_seed(kind, o, "none", None, a),
            r.by_seed(kind, o, "none", None, last),
            r.by_seed(kind, o, method, lam, a),
            r.by_seed(kind, o, method, lam, last),
        ]
        seeds = set.intersection(*(set(c) for c in cols))
        raw[o] = {s: tuple(c[s] for c in cols) for s in sorted(seeds)}  # type: ignore[misc]
    missing = {
        _name(o): "no seed with all five accuracies" for o, v in raw.items() if not v
    }
    raw = {o: v for o, v in raw.items() if v}
    every = set.intersection(*(set(v) for v in raw.values())) if raw else set()
    for s in sorted({s for v in raw.values() for s in v} - every):
        lacking = [_name(o) for o, v in raw.items() if s not in v]
        missing[f"seed {s}"] = f"missing on {', '.join(lacking)}"
    pairs = {o: {s: v[s] for s in sorted(every)} for o, v in raw.items()}
    return pairs, missing


def _forgot_everywhere(
    pairs: Mapping[Order, Mapping[int, Pair]], points: float
) -> tuple[list[Order], dict[str, str]]:
    """Permutations where plain fine-tuning forgot ≥ ``points`` in every seed; why not."""
    kept, why = [], {}
    for o, by_seed in pairs.items():
        low = {s: p[0] - p[1] for s, p in by_seed.items() if not p[0] - p[1] >= points}
        if low:
            seen = ", ".join(f"seed {s}: {x:.2f}" for s, x in low.items())
            why[_name(o)] = f"plain fine-tuning forgot < {points:g} points ({seen})"
        else:
            kept.append(o)
    return kept, why


def _per_seed(
    pairs: Mapping[Order, Mapping[int, Pair]],
    perms: list[Order],
    stat: Callable[[list[Pair]], float],
) -> dict[int, float]:
    """``stat`` over ``perms`` per seed; empty when ``perms`` is."""
    if not perms:
        return {}
    seeds = next(iter(pairs.values())).keys()
    return {s: stat([pairs[o][s] for o in perms]) for s in seeds}


def _reductions(xs: list[Pair]) -> list[float]:
    out = [reduction(p[3], p[1], p[0]) for p in xs]
    assert all(x is not None for x in out)  # the permutations were guarded
    return out  # type: ignore[return-value]


def _mean_reduction(xs: list[Pair]) -> float:
    return float(np.mean(_reductions(xs)))


def _median_reduction(xs: list[Pair]) -> float:
    return float(np.median(_reductions(xs)))


def _mean_cost(xs: list[Pair]) -> float:
    return float(np.mean([p[2] - p[4] for p in xs]))


def _per_permutation(
    pairs: Mapping[Order, Mapping[int, Pair]], lams: Mapping[Order, Any]
) -> dict[str, Any]:
    """Per permutation: its value, reduction per seed and mean, none's forgetting, cost."""
    out = {}
    for o, by_seed in pairs.items():
        red = {s: reduction(p[3], p[1], p[0]) for s, p in by_seed.items()}
        defined = [x for x in red.values() if x is not None]
        out[_name(o)] = {
            "value": _json_lam(lams[o]),
            "reduction": float(np.mean(defined)) if len(defined) == len(red) else None,
            "reduction_per_seed": {str(s): x for s, x in red.items()},
            "none_forgetting_points": _mean(p[0] - p[1] for p in by_seed.values()),
            "none_forgetting_percent": _mean(
                100 * (p[0] - p[1]) / p[0] for p in by_seed.values()
            ),
            "new_task_cost": _mean(p[2] - p[4] for p in by_seed.values()),
        }
    return out


def _interval_note(seeds: int) -> str:
    """Why an interval is missing, or empty."""
    if seeds < 2:
        return f"{seeds} seed(s): no interval, no bootstrap"
    if seeds < MIN_BOOTSTRAP:
        return f"{seeds} seeds: t interval only, no bootstrap (needs {MIN_BOOTSTRAP})"
    return ""


def _has_grid(r: RunResults, tier: int, method: str) -> bool:
    """Whether ``method`` ran more than one value in ``tier`` (a knob was chosen)."""
    if method not in sweep.REGULARIZED:
        return False
    values = {
        str(x["lam"]) for x in r.records if x["tier"] == tier and x["method"] == method
    }
    return len(values) > 1


def _mean(xs: Any) -> float:
    vals = list(xs)
    return float(np.mean(vals)) if vals else math.nan


def _name(order: Order) -> str:
    return "→".join(order)


def _json_lam(lam: Any) -> Any:
    return list(lam) if isinstance(lam, tuple) else lam


def _keyed(lams: Mapping[Order, Any]) -> dict[str, Any]:
    return {_name(o): _json_lam(v) for o, v in sorted(lams.items())}


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of ``config`` as canonical JSON (sorted keys, no spaces, UTF-8).

    >>> config_digest({"b": 1, "a": [1.0]})[:12]
    '538bef2b3b7a'
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def provenance(env: Mapping[str, Any]) -> dict[str, Any]:
    """Commit and machine of a run from its ``env.json`` (the last invocation's).

    Returns:
        ``commit``, ``machine`` (CPU or device name, CPU count, device, torch version,
        platform, Python) and ``sessions`` (each invocation's start, commit and
        machine, so a run resumed elsewhere shows it).
    """
    sessions = [
        {
            "started": s.get("started"),
            "commit": s.get("git_commit"),
            "machine": _machine(s),
        }
        for s in env.get("sessions", [])
    ]
    last = sessions[-1] if sessions else {"commit": None, "machine": None}
    return {"commit": last["commit"], "machine": last["machine"], "sessions": sessions}


def _machine(session: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "cpu": session.get("device_name"),
        "cpu_count": session.get("cpu_count"),
        "device": session.get("device"),
        "torch": (session.get("packages") or {}).get("torch"),
        "platform": session.get("platform"),
        "python": session.get("python"),
    }


def results_document(
    config: Mapping[str, Any], env: Mapping[str, Any], claims: Sequence[Claim]
) -> dict[str, Any]:
    """The ``results.json`` of one run (schema: docs/experiments.md)."""
    return _finite(
        {
            "run": config.get("name"),
            "config_digest": config_digest(config),
            **provenance(env),
            "claims": [c.to_json() for c in claims],
        }
    )


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
