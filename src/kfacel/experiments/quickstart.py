"""The quickstart: three demo tasks in one order, the CNN, none vs EWC vs KFC.

Every task is first trained alone (its "individual" accuracy, the reference of Perc Δ).
The model trained on the first task is then updated on the second and third task with
each method, consolidating every finished task, and evaluated on every task seen so far
after each step. All of it runs for a few seeds and the accuracies are averaged over
them. The result is an accuracy matrix per method, Perc Δ of each task after the last
step, and the forgetting reduction of each method against plain fine-tuning, pooled over
the earlier tasks that plain fine-tuning forgot (``pooled_reduction``): one demo task's
forgetting is a few test queries, and a ratio of two such small differences moved by
tens of points from one seed or thread count to the next.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfacel._io import atomic_write_json, atomic_write_text
from kfacel.consolidation import TaskState
from kfacel.experiments.metrics import perc_delta
from kfacel.linking.evaluate import evaluate_split
from kfacel.linking.linker import Linker, new_linker
from kfacel.penalties.strength import Strength
from kfacel.tasks.directory import Task
from kfacel.training.consolidate import consolidate_task
from kfacel.training.continual import ContinualSettings, update_linker
from kfacel.training.fit import fit_task
from kfacel.training.trainer import TrainSettings

EPOCHS = 10
"""Epochs a demo task trains (the paper's 10): with 3, plain fine-tuning forgot 0–3% of
the demo and the printed reduction centred on nothing (docs/results.md, "The
quickstart")."""

SMALL_FORGETTING = 1.0
"""Perc Δ (percent) above −this: plain fine-tuning barely forgot the task, so the task
is left out of the forgetting reduction and named (what a method removes of almost
nothing is noise)."""


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart measured: test accuracies in [0, 1], means over ``seeds``."""

    tasks: tuple[str, ...]
    individual: dict[str, float]
    matrices: dict[
        str, list[list[float]]
    ]  # method -> acc[after step, on task] (NaN unseen)
    perc_delta: dict[
        str, dict[str, float]
    ]  # method -> task -> Perc Δ after the last step
    forgetting_reduction: dict[str, float]  # method -> % (NaN when none forgot nothing)
    strengths: dict[str, str]  # method -> "λ = …" or "ε = … (default budget)"
    not_forgotten: tuple[str, ...] = ()  # earlier tasks plain fine-tuning barely forgot
    seconds: dict[str, float] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    rules: dict[str, str] = field(default_factory=dict)  # method -> its strength rule


def run_quickstart(
    tasks: Sequence[Task],
    *,
    methods: Sequence[str] = ("none", "ewc", "kfac"),
    lams: Mapping[str, float] | None = None,
    epochs: int = EPOCHS,
    lr: float = 1e-3,
    batch_size: int = 32,
    hidden: int = 128,
    seed: int = 0,
    seeds: int = 2,
    jobs: int = 1,
    progress: bool = False,
    log: Any = None,
) -> QuickstartResult:
    """Train, consolidate and update along ``tasks`` with each method; see the module doc.

    Args:
        tasks: the task order (at least two).
        methods: ``none`` is needed as the reference of the forgetting reduction.
        lams: a fixed λ per method (one λ for every consolidated task); a method
            without one uses the product's default rule (``ContinualSettings``'
            default forgetting budget), as ``kfacel train --penalty kfac`` does.
        epochs: epochs per task.
        lr: learning rate.
        batch_size: queries per batch.
        hidden: CNN width.
        seed: the first seed (initialization and batch order).
        seeds: how many seeds (``seed``, ``seed + 1``, …) every run is repeated with;
            the accuracies are their means.
        jobs: processes the seeds run in side by side (each with an equal share of
            torch's threads; the numbers do not depend on it): 1 runs them here.
        progress: progress bars (one process only).
        log: ``print``-like callable for one line per stage, or None.
    """
    if len(tasks) < 2:
        raise ValueError("the quickstart needs at least two tasks")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    lams = dict(lams or {})
    say = log or (lambda *_: None)
    seconds = dict.fromkeys(("individual", *methods), 0.0)
    settings = [
        TrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, seed=s)
        for s in range(seed, seed + seeds)
    ]
    if jobs > 1 and seeds > 1:
        runs = _in_processes(tasks, methods, lams, settings, hidden, seconds, jobs, say)
    else:
        runs = []
        for one in settings:
            prefix = f"seed {one.seed}: " if seeds > 1 else ""
            runs.append(
                _one_seed(
                    tasks, methods, lams, one, hidden, seconds, progress,
                    lambda line, p=prefix: say(p + line),
                )
            )  # fmt: skip
    individual = {t: float(np.mean([r[0][t] for r in runs])) for t in runs[0][0]}
    matrices = {m: np.mean([r[1][m] for r in runs], axis=0).tolist() for m in methods}
    names = tuple(t.name for t in tasks)
    deltas = {
        m: {
            t: perc_delta(a, individual[t]) for t, a in zip(names, mat[-1], strict=True)
        }
        for m, mat in matrices.items()
    }
    reductions, not_forgotten = _reductions(deltas, names[:-1])
    return QuickstartResult(
        names,
        individual,
        matrices,
        deltas,
        reductions,
        {m: _strength(m, lams.get(m)) for m in methods},
        not_forgotten,
        seconds,
        tuple(range(seed, seed + seeds)),
        {m: _rule(m, lams.get(m)) for m in methods},
    )


def _one_seed(
    tasks: Sequence[Task],
    methods: Sequence[str],
    lams: Mapping[str, float],
    settings: TrainSettings,
    hidden: int,
    seconds: dict[str, float],
    progress: bool,
    say: Any,
) -> tuple[dict[str, float], dict[str, list[list[float]]]]:
    """The individual accuracies and each method's matrix at ``settings.seed``.

    Adds each stage's seconds to ``seconds``.
    """
    start = time.perf_counter()
    individual: dict[str, float] = {}
    first: Linker | None = None
    for task in tasks:
        linker = new_linker("cnn", task.train, hidden=hidden, seed=settings.seed)
        fit_task(linker, task, settings, progress=progress)
        individual[task.name] = evaluate_split(linker, task.test).accuracy
        say(f"individual {task.name}: test accuracy {individual[task.name]:.3f}")
        first = first or linker
    assert first is not None
    seconds["individual"] += time.perf_counter() - start
    matrices: dict[str, list[list[float]]] = {}
    for method in methods:
        start = time.perf_counter()
        continual = _continual(method, lams.get(method))
        matrices[method] = _update_along(
            copy.deepcopy(first), tasks, settings, continual, progress, say
        )
        matrices[method][0][0] = individual[tasks[0].name]
        seconds[method] += time.perf_counter() - start
    return individual, matrices


def _in_processes(
    tasks: Sequence[Task],
    methods: Sequence[str],
    lams: Mapping[str, float],
    settings: Sequence[TrainSettings],
    hidden: int,
    seconds: dict[str, float],
    jobs: int,
    say: Any,
) -> list[tuple[dict[str, float], dict[str, list[list[float]]]]]:
    """``_one_seed`` for each of ``settings`` in ``jobs`` fresh processes, in seed order.

    Each process gets an equal share of torch's threads; its log lines are said, with
    their seed, as its seed finishes. Adds the stages' seconds to ``seconds``.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    workers = min(jobs, len(settings))
    threads = max(1, torch.get_num_threads() // workers)
    args = [(tasks, methods, lams, one, hidden, threads) for one in settings]
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        done = list(pool.map(_seed_in_process, args))
    for one, (_, _, spent, lines) in zip(settings, done, strict=True):
        for line in lines:
            say(f"seed {one.seed}: {line}")
        for stage, secs in spent.items():
            seconds[stage] += secs
    return [(individual, matrices) for individual, matrices, _, _ in done]


def _seed_in_process(
    args: tuple[Any, ...],
) -> tuple[dict[str, float], dict[str, list[list[float]]], dict[str, float], list[str]]:
    """One seed in a worker process: its accuracies, seconds and log lines."""
    import torch

    tasks, methods, lams, settings, hidden, threads = args
    torch.set_num_threads(threads)
    seconds = dict.fromkeys(("individual", *methods), 0.0)
    lines: list[str] = []
    individual, matrices = _one_seed(
        tasks, methods, lams, settings, hidden, seconds, False, lines.append
    )
    return individual, matrices, seconds, lines


def _strength(method: str, lam: float | None) -> str:
    """How strong ``method``'s penalty was, for the table."""
    if method == "none":
        return "–"
    continual = _continual(method, lam)
    d = continual.curvature_damping
    budget = continual.strength.budget
    strength = f"λ = {lam:g}" if lam is not None else f"ε = {budget:g}"
    if d.delta:
        strength += f", δ = {d.delta:g} {d.kind}"
    return strength if lam is not None else f"{strength} (default)"


def _rule(method: str, lam: float | None) -> str:
    """Which strength rule ``method`` used, in words."""
    if method == "none":
        return "no penalty"
    if lam is not None:
        return f"a fixed λ = {lam:g}"
    budget = _continual(method, lam).strength.budget
    return (
        f"the default forgetting budget (λ adapted during training so that each old "
        f"task's predicted loss rise stays ≤ ε = {budget:g} nats)"
    )


def _continual(method: str, lam: float | None) -> ContinualSettings:
    """``method`` at the fixed ``lam``, or at the product's default rule without one."""
    return ContinualSettings(penalty=method, strength=Strength(lam=lam))


def _update_along(
    linker: Linker,
    tasks: Sequence[Task],
    settings: TrainSettings,
    continual: ContinualSettings,
    progress: bool,
    say: Any,
) -> list[list[float]]:
    """Consolidate each task and update on the next; acc[after step, on task] (NaN unseen).

    The first row's first entry (the start model on the first task) is left NaN.
    """
    method = continual.penalty
    states: list[TaskState] = []
    matrix = [[math.nan] * len(tasks) for _ in tasks]
    for step, task in enumerate(tasks[1:], start=1):
        if method != "none":
            states.append(consolidate_task(linker, tasks[step - 1], method=method))
        update_linker(linker, task, states, settings, continual, progress=progress)
        for seen in range(step + 1):
            matrix[step][seen] = evaluate_split(linker, tasks[seen].test).accuracy
        accs = [f"{tasks[i].name} {matrix[step][i]:.3f}" for i in range(step + 1)]
        say(f"{method} after {task.name}: " + ", ".join(accs))
    return matrix


def _reductions(
    deltas: dict[str, dict[str, float]], old: Sequence[str]
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Forgetting reduction of each method against ``none``, pooled over ``old`` tasks.

    ``100 · (1 − Σ_t PercΔ_method(t) / Σ_t PercΔ_none(t))`` over the old tasks ``t``
    that plain fine-tuning forgot (``PercΔ_none(t) < −SMALL_FORGETTING``): the share of
    its total forgetting that the method removes (NaN when it forgot none of them).
    Returns the reductions (%) and the old tasks left out.
    """
    if "none" not in deltas:
        return {}, ()
    none = deltas["none"]
    kept = [t for t in old if none[t] < -SMALL_FORGETTING]
    left_out = tuple(t for t in old if t not in kept)
    lost = sum(none[t] for t in kept)
    reductions = {
        m: 100.0 * (1.0 - sum(d[t] for t in kept) / lost) if kept else math.nan
        for m, d in deltas.items()
        if m != "none"
    }
    return reductions, left_out


def format_table(result: QuickstartResult) -> str:
    """Markdown table: accuracy after the last task and Perc Δ, per method and task."""
    head = "| method | strength | " + " | ".join(
        f"{t} acc | {t} Perc Δ" for t in result.tasks
    )
    head += " | forgetting reduction |"
    rows = [head, "|" + "---|" * (2 * len(result.tasks) + 3)]
    rows.append(
        "| individual | – | "
        + " | ".join(f"{100 * result.individual[t]:.1f} | –" for t in result.tasks)
        + " | – |"
    )
    for method, matrix in result.matrices.items():
        cells = [
            f"{100 * a:.1f} | {result.perc_delta[method][t]:+.1f}%"
            for t, a in zip(result.tasks, matrix[-1], strict=True)
        ]
        fr = result.forgetting_reduction.get(method)
        fr_cell = "–" if fr is None else ("n/a" if math.isnan(fr) else f"{fr:.1f}%")
        lam = result.strengths.get(method, "–")
        rows.append(f"| {method} | {lam} | " + " | ".join(cells) + f" | {fr_cell} |")
    rows.append("")
    if result.rules:  # methods that share a rule share its words
        by_rule: dict[str, list[str]] = {}
        for method, rule in result.rules.items():
            by_rule.setdefault(rule, []).append(method)
        rules = "; ".join(f"{', '.join(ms)}: {r}" for r, ms in by_rule.items())
        rows.append(f"Strength rule: {rules}.")
    seeds = ", ".join(map(str, result.seeds))
    rows.append(
        f"Accuracies are means over seeds {seeds}; the forgetting reduction is pooled "
        "over the earlier tasks: 1 − Σ PercΔ_method / Σ PercΔ_none."
    )
    if result.not_forgotten:
        rows.append(
            f"Left out of the forgetting reduction (plain fine-tuning barely forgot them, "
            f"Perc Δ above −{SMALL_FORGETTING:g}%): {', '.join(result.not_forgotten)}."
        )
    return "\n".join(rows)


def write_report(result: QuickstartResult, out: Path) -> list[Path]:
    """Write the quickstart's report into ``out``; returns the files written.

    ``report.md``, ``results.json``, an accuracy-matrix CSV and PNG per method and the
    paper's Figure 1 toy.
    """
    from kfacel.experiments.figures import plot_accuracy_matrix, plot_toy_gaussians

    out.mkdir(parents=True, exist_ok=True)
    written = []
    data = asdict(result)
    atomic_write_json(out / "results.json", _no_nan(data))
    written.append(out / "results.json")
    figures = []
    for method, matrix in result.matrices.items():
        csv = out / f"accuracy_matrix_{method}.csv"
        lines = ["after," + ",".join(result.tasks)]
        lines += [
            f"{result.tasks[i]},"
            + ",".join("" if math.isnan(a) else f"{a:.4f}" for a in row)
            for i, row in enumerate(matrix)
        ]
        atomic_write_text(csv, "\n".join(lines) + "\n")
        png = plot_accuracy_matrix(
            100 * np.array(matrix),
            list(result.tasks),
            out / f"accuracy_matrix_{method}.png",
        )
        written += [csv, Path(png)]
        figures.append(f"![{method}](accuracy_matrix_{method}.png)")
    toy = plot_toy_gaussians(out / "figure1_toy.png")
    written.append(Path(toy))
    report = [
        "# kfacel quickstart",
        "",
        f"Tasks in order: {' → '.join(result.tasks)}. Test accuracy (%) after the last task,",
        "Perc Δ against each task's individually trained model, and the forgetting",
        "reduction: the share of plain fine-tuning's forgetting a method removes.",
        "",
        format_table(result),
        "",
        "Seconds per stage: "
        + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()),
        "",
        *figures,
        "",
        "![Figure 1: true, diagonal and K-FAC Gaussians of a 2-parameter toy](figure1_toy.png)",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(report))
    written.append(out / "report.md")
    return written


def _no_nan(x: Any) -> Any:
    """NaN as null, so the file is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_no_nan(v) for v in x]
    return x
