"""The cells of the paper's protocol and the λ choices between tiers: no torch, no IO.

A **cell** is one unit of work of a run with its own directory ``cells/<id>/`` (see
``runner.py``). The plan, in the order the runner executes it (each stage only needs
the stages before it):

1. ``individual`` (tier 1): each task alone, from a fresh model; its checkpoint is kept
   and shared by every later cell that starts from it. ``combined`` (tier 1): all
   tasks' training queries shuffled together (the multi-task reference of Table 2).
2. ``consolidate``: the consolidation state (anchor + curvature) of a tier-1 model for
   one method (``l2``, ``ewc``, ``kfac``), computed once and shared.
3. ``tier2``: every ordered pair A→B × method × λ (λ only for l2/ewc/kfac).
4. ``resume``: per pair A→B and method, the chosen tier-2 model, with task B
   consolidated by the same method; the start of tier 3.
5. ``tier3``: every order A→B→C × method × (λ_A, λ_B) of ``tier3_lambda_grid``.

λ is chosen on dev accuracies (``select_lambda``), averaged over seeds: tier 2 by the
first task's accuracy (old) against the second's (new); tier 3 by the mean of the two
old tasks' accuracies against the third's. The same functions serve the runner (to plan
tier 3) and the report (to pick the rows of the tables).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import permutations
from typing import Any, Literal

from kfacel.experiments.metrics import (
    TIER3_FACTORS,
    LambdaTrial,
    select_lambda,
    tier3_lambda_grid,
)

BUDGETED = {"kfac-budget": "kfac", "ewc-budget": "ewc"}
"""Methods whose strength is a forgetting budget ε, by the state method they use."""

REGULARIZED = ("l2", "ewc", "kfac", *BUDGETED)
"""Methods with a consolidation state and a strength (λ, or ε for the budgeted ones)."""

REPLAYING = ("replay", "ilora")
"""Methods that read the earlier task's training queries (old data)."""


def state_method(method: str) -> str:
    """The consolidation method whose state ``method`` penalizes with."""
    return BUDGETED.get(method, method)


class CellKind(StrEnum):
    """What a cell does (its ``done.json`` and records carry the value)."""

    INDIVIDUAL = "individual"  # tier 1: one task from a fresh model
    COMBINED = "combined"  # tier 1: all tasks together (the multi-task reference)
    CONSOLIDATE = "consolidate"  # a tier-1 model's consolidation state
    TIER2 = "tier2"  # continue on the second task of an order
    RESUME = "resume"  # tier 3's start: the chosen tier-2 model, consolidated
    TIER3 = "tier3"  # continue on the third task


Lam = float | tuple[float, ...] | None


@dataclass(frozen=True)
class Cell:
    """One unit of work; plain values only, so it travels to worker processes as JSON.

    Attributes:
        kind: what the cell does.
        tier: 1, 2 or 3 (``consolidate`` counts as the tier it serves).
        order: task names in training order (``combined``: all tasks).
        method: ``none``, ``lrc``, ``replay``, ``l2``, ``ewc`` or ``kfac``; ``none`` for
            tier 1.
        lam: λ (tier 2), one λ per prior task (tier 3), or None.
        seed: initialization, batch order and Fisher subset seed.
    """

    kind: CellKind
    tier: int
    order: tuple[str, ...]
    method: str = "none"
    lam: Lam = None
    seed: int = 0

    @property
    def id(self) -> str:
        """Directory name, unique within a run: ``tier2-a-b-kfac-1e+03-s0``."""
        parts = [self.kind, *self.order, self.method]
        if self.lam is not None:
            lams = self.lam if isinstance(self.lam, tuple) else (self.lam,)
            parts.append("_".join(f"{x:.3g}" for x in lams))
        return "-".join([*parts, f"s{self.seed}"]).replace("/", "_")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``from_json`` reads it back)."""
        lam = list(self.lam) if isinstance(self.lam, tuple) else self.lam
        return {
            "kind": self.kind,
            "tier": self.tier,
            "order": list(self.order),
            "method": self.method,
            "lam": lam,
            "seed": self.seed,
            "id": self.id,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Cell:
        """Inverse of ``to_json``."""
        lam = d.get("lam")
        return cls(
            CellKind(d["kind"]),
            int(d["tier"]),
            tuple(d["order"]),
            str(d["method"]),
            tuple(float(x) for x in lam) if isinstance(lam, list) else lam,
            int(d["seed"]),
        )


def individual(task: str, seed: int) -> Cell:
    """The tier-1 cell of ``task`` alone."""
    return Cell(CellKind.INDIVIDUAL, 1, (task,), seed=seed)


def consolidation(task: str, method: str, seed: int) -> Cell:
    """The consolidation of ``task``'s tier-1 model by ``method``."""
    return Cell(CellKind.CONSOLIDATE, 2, (task,), method, seed=seed)


def resume_point(a: str, b: str, method: str, lam: Lam, seed: int) -> Cell:
    """The chosen tier-2 model of A→B under ``method`` (λ chosen), B consolidated."""
    return Cell(CellKind.RESUME, 3, (a, b), method, lam, seed)


def plan_tier1(
    tasks: Sequence[str], seeds: Sequence[int], *, combined: bool = True
) -> list[Cell]:
    """Each task alone, and (``combined``) all of them together."""
    cells = [individual(t, s) for s in seeds for t in tasks]
    if combined and len(tasks) > 1:
        cells += [Cell(CellKind.COMBINED, 1, tuple(tasks), seed=s) for s in seeds]
    return cells


def plan_consolidations(
    tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int]
) -> list[Cell]:
    """One state per tier-1 model and regularized method."""
    regs = sorted({state_method(m) for m in methods if m in REGULARIZED})
    return [consolidation(t, m, s) for s in seeds for t in tasks for m in regs]


def plan_tier2(
    tasks: Sequence[str],
    methods: Sequence[str],
    lam_grid: Sequence[float],
    seeds: Sequence[int],
    pairs: Sequence[tuple[str, str]] = (),
    budget_grid: Sequence[float] = (),
) -> list[Cell]:
    """Every ordered pair (or only ``pairs``) × method × λ.

    Methods without a λ (none, lrc, replay) get one cell per pair; budgeted methods
    one per ε of ``budget_grid`` (the cell's ``lam`` holds ε).
    """
    cells = []
    for s in seeds:
        for a, b in pairs or list(permutations(tasks, 2)):
            for m in methods:
                lams: Sequence[float | None] = [None]
                if m in REGULARIZED:
                    lams = budget_grid if m in BUDGETED else lam_grid
                cells += [Cell(CellKind.TIER2, 2, (a, b), m, lam, s) for lam in lams]
    return cells


SELECTION_RULE = (
    "best old-task dev accuracy among the λ whose new-task dev accuracy is within "
    "new_task_tolerance points of plain fine-tuning's on the same order"
)
"""How ``choose`` picks λ; written to ``selection.json`` (runs made before 2026-11-22
measured the tolerance from the method's own best λ and have no ``rule`` there)."""


def choose(
    records: Iterable[Mapping[str, Any]],
    *,
    tier: int,
    tolerance: float,
) -> dict[tuple[tuple[str, ...], str], Lam]:
    """The λ chosen on dev for each (order, method) of ``tier``, seeds averaged.

    A λ is admissible when its new-task dev accuracy is within ``tolerance`` points of
    plain fine-tuning's (``none``) on the same order, where the run has it (otherwise of
    the method's best λ): a grid whose every λ stops the new task from being learned
    yields no choice rather than the least bad of them. A budgeted method run at a
    single ε is the product's default, not a grid to choose from: it is kept whatever its
    new-task accuracy, which the report's new-task cost then shows.

    Args:
        records: ``metrics.jsonl`` records (failed cells have none).
        tier: 2 (old task: the first) or 3 (old: the mean of the first two).
        tolerance: ``new_task_tolerance`` of ``select_lambda``, in accuracy points.

    Returns:
        ``{(order, method): λ}``; methods without λ map to None; an (order, method)
        whose every λ failed, or none kept the new task, is left out (``left_out``
        says which and why).
    """
    return _choices(records, tier, tolerance)[0]


def left_out(
    records: Iterable[Mapping[str, Any]],
    *,
    tier: int,
    tolerance: float,
    planned: Iterable[tuple[tuple[str, ...], str]] = (),
) -> list[str]:
    """One line per (order, method) of ``tier`` that ``choose`` leaves out, and why.

    Those of the records whose every λ costs the new task more than ``tolerance``
    points of plain fine-tuning's dev accuracy, and those of ``planned`` with no
    finished cell (failed, or not run yet).
    """
    records = list(records)
    chosen, reasons = _choices(records, tier, tolerance)
    for key in planned:
        if key not in chosen and key not in reasons:
            reasons[key] = "no finished cell (failed, or not run yet)"
    return [
        f"tier {tier} {'→'.join(order)} {method}: {why}"
        for (order, method), why in sorted(reasons.items(), key=lambda kv: str(kv[0]))
    ]


def _choices(
    records: Iterable[Mapping[str, Any]], tier: int, tolerance: float
) -> tuple[
    dict[tuple[tuple[str, ...], str], Lam], dict[tuple[tuple[str, ...], str], str]
]:
    """``choose``'s λ per (order, method), and why each other one with records has none."""
    trials = dev_trials(records, tier)
    plain = {o: ts[0].new_acc for (o, m), ts in trials.items() if m == "none"}
    chosen: dict[tuple[tuple[str, ...], str], Lam] = {}
    reasons: dict[tuple[tuple[str, ...], str], str] = {}
    for key, ts in sorted(trials.items(), key=lambda kv: str(kv[0])):
        if key[1] not in REGULARIZED:
            chosen[key] = None
            continue
        if key[1] in BUDGETED and len(ts) == 1:  # nothing to choose among
            chosen[key] = ts[0].lam
            continue
        ref = plain.get(key[0])
        try:
            best = select_lambda(
                ts, new_task_tolerance=tolerance, reference_new_acc=ref
            )
        except ValueError as exc:
            reasons[key] = _why_no_choice(ts, ref, tolerance, exc)
            continue
        chosen[key] = best.lam
    return chosen, reasons


def _why_no_choice(
    trials: Sequence[LambdaTrial],
    reference: float | None,
    tolerance: float,
    exc: ValueError,
) -> str:
    """Why ``select_lambda`` refused every trial (``exc``), in the report's words."""
    if reference is None:
        return str(exc)
    top = max(trials, key=lambda t: t.new_acc)
    return (
        f"new-task dev accuracy more than {tolerance:g} points below plain "
        f"fine-tuning's {reference:.2f} at every λ (best {top.new_acc:.2f}, "
        f"λ {_lam_text(top.lam)})"
    )


def dev_trials(
    records: Iterable[Mapping[str, Any]], tier: int
) -> dict[tuple[tuple[str, ...], str], list[LambdaTrial]]:
    """Dev accuracies per (order, method) and λ of ``tier``, seeds averaged."""
    dev: dict[tuple[tuple[str, ...], str, Any], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in records:
        if r["tier"] != tier or r["split"] != "dev":
            continue
        lam = tuple(r["lam"]) if isinstance(r["lam"], list) else r["lam"]
        dev[(tuple(r["order"]), r["method"], lam)][r["task"]].append(r["accuracy"])
    trials: dict[tuple[tuple[str, ...], str], list[LambdaTrial]] = defaultdict(list)
    for (order, method, lam), by_task in dev.items():
        if not all(t in by_task for t in order):
            continue
        mean = {t: sum(v) / len(v) for t, v in by_task.items()}
        old = sum(mean[t] for t in order[:-1]) / (len(order) - 1)
        trials[(order, method)].append(LambdaTrial(lam, old, mean[order[-1]]))
    return trials


def _lam_text(lam: Lam) -> str:
    """λ as text, one value per prior task joined by ``/``.

    >>> _lam_text(1000.0), _lam_text((10.0, 0.1))
    ('1e+03', '10/0.1')
    """
    lams = lam if isinstance(lam, tuple) else (lam,)
    return "/".join(f"{float(x):.3g}" for x in lams if x is not None) or "–"


def plan_resume(
    tier2_chosen: Mapping[tuple[tuple[str, ...], str], Lam], seeds: Sequence[int]
) -> list[Cell]:
    """The starting points of tier 3: every chosen (pair, method) of tier 2."""
    return [
        resume_point(order[0], order[1], m, lam, s)
        for s in seeds
        for (order, m), lam in sorted(tier2_chosen.items(), key=lambda kv: str(kv[0]))
    ]


def plan_tier3(
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    tier2_chosen: Mapping[tuple[tuple[str, ...], str], Lam],
    *,
    factors: Sequence[float] = TIER3_FACTORS,
    mean: Literal["geometric", "arithmetic"] = "geometric",
    search_first: bool = False,
) -> tuple[list[Cell], list[str]]:
    """Every order of three × method × the appendix-A λ pairs.

    Returns:
        The cells, and one line per (order, method) left out because a tier-2 choice
        it needs is missing.
    """
    cells, skipped = [], []
    for order in permutations(tasks, 3):
        for m in methods:
            if ((order[0], order[1]), m) not in tier2_chosen:
                skipped.append(f"{'→'.join(order)} {m}: no tier-2 choice for the start")
                continue
            grid: list[Lam] = [None]
            if m in REGULARIZED:
                optima = {
                    (o[0], o[1]): float(lam)  # type: ignore[arg-type]
                    for (o, mm), lam in tier2_chosen.items()
                    if mm == m and lam is not None
                }
                try:
                    grid = list(
                        tier3_lambda_grid(
                            optima,
                            order,
                            factors=factors,
                            mean=mean,
                            search_first=search_first,
                        )
                    )
                except ValueError as exc:
                    skipped.append(f"{'→'.join(order)} {m}: {exc}")
                    continue
            cells += [
                Cell(CellKind.TIER3, 3, order, m, lam, s) for s in seeds for lam in grid
            ]
    return cells, skipped
