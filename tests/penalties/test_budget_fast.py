"""The budget's in-place path against a straightforward reference, step by step.

The reference takes each ``q_t`` and ``∇q_t`` by autograd of the unit penalty's value
and adds ``λ_t ∇q_t`` to dense gradients; ``BudgetPenalty.add_grad_`` adds them in place
from one pass per unit (embedding rows by index, nothing for ``λ_t = 0``). Both run the
same training steps on a tiny model in float64 and must give the same λ trajectory and
the same gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel.consolidation import TaskState, snapshot
from kfacel.curvature import estimate_diagonal, estimate_kfac
from kfacel.penalties import make_penalty
from kfacel.penalties.budget import BudgetPenalty, _value_and_add_grad_, dual_step
from kfacel.penalties.strength import Damping, TaskStrengths
from tests._synth import TinyRanker
from tests.oracles import TOL64

STEPS = 12


def _states(method: str) -> tuple[nn.Module, list[TaskState], dict, torch.Tensor]:
    """Two consolidated tasks (the second after a perturbation) and a new batch."""
    torch.manual_seed(0)
    model = TinyRanker().double()
    ids = torch.randint(0, 6, (6, 5))  # tokens 6..8 unseen: zero-frequency rows
    batch = {"ids": ids, "mask": torch.ones(6, 5, dtype=torch.bool)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    estimate = estimate_kfac if method == "kfac" else estimate_diagonal
    kwargs = {"uncovered": "diagonal"} if method == "kfac" else {}
    states = []
    for task in ("A", "B"):
        fisher = estimate(model, [(batch, y)], **kwargs)
        states.append(TaskState(task, method, snapshot(model), fisher, {}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    new_ids = torch.randint(2, 5, (6, 5))  # only rows 2..4 of the table move
    return model, states, {"ids": new_ids, "mask": batch["mask"]}, y.flip(0)


def _reference_grad(penalty: BudgetPenalty, model: nn.Module) -> list[float]:
    """Add ``Σ λ_t ∇q_t`` by autograd to dense gradients; the ``q_t``."""
    params = [p for p in model.parameters() if p.requires_grad]
    rises = []
    for lam, unit in zip(penalty.lams, penalty.units, strict=True):
        q = unit(model)
        grads = torch.autograd.grad(q, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if g is not None and lam > 0:
                p.grad = lam * g if p.grad is None else p.grad + lam * g
        rises.append(float(q.detach()))
    return rises


def _run(model, penalty, batch, y, *, reference: bool):
    """STEPS SGD steps; per step the λ before it and every gradient."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    trace = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(**batch), y).backward()
        lams = list(penalty.lams)
        if reference:
            rises = _reference_grad(penalty, model)
            penalty.lams = [
                dual_step(lam, q, eps, rate=penalty.rate, floor=penalty.floor)
                for lam, q, eps in zip(lams, rises, penalty.budgets, strict=True)
            ]
        else:
            penalty.add_grad_(model)
            penalty.after_task_step()
        trace.append((lams, [p.grad.clone() for p in model.parameters()]))
        opt.step()
    return trace


@pytest.mark.parametrize(
    ("method", "damping"),
    [
        ("kfac", Damping(0.0, "uniform")),
        ("kfac", Damping(0.1, "uniform")),
        ("kfac", Damping(0.1, "factored")),
        ("ewc", Damping(0.0, "uniform")),
        ("ewc", Damping(0.1, "uniform")),
    ],
)
def test_in_place_budget_equals_autograd_reference(method, damping) -> None:
    model, states, batch, y = _states(method)
    strengths = TaskStrengths(budgets=(1e-4, 1e-2), rate=0.5)
    runs = []
    for reference in (False, True):
        m = TinyRanker().double()
        m.load_state_dict(model.state_dict())
        penalty = make_penalty(method, states, strengths, damping)
        assert isinstance(penalty, BudgetPenalty)
        runs.append((_run(m, penalty, batch, y, reference=reference), penalty.lams))
    (fast, fast_lams), (ref, ref_lams) = runs
    assert fast_lams[0] > 0  # the tight budget binds: λ_t ∇q_t is exercised
    torch.testing.assert_close(fast_lams, ref_lams, rtol=1e-12, atol=0)
    for (lams, grads), (ref_lams_t, ref_grads) in zip(fast, ref, strict=True):
        torch.testing.assert_close(lams, ref_lams_t, rtol=1e-12, atol=0)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, **TOL64)


def test_in_place_budget_equals_the_dense_path_bit_for_bit() -> None:
    """The in-place adds give exactly the numbers of the former dense-copy path."""
    model, states, batch, y = _states("kfac")
    penalty = make_penalty("kfac", states, TaskStrengths(budgets=(1e-4, 1e-2)))
    assert isinstance(penalty, BudgetPenalty)
    penalty.lams = [2.5, 0.0]
    with torch.no_grad():
        model.emb.weight[3] += 0.1
    nn.functional.cross_entropy(model(**batch), y).backward()
    start = [p.grad.clone() for p in model.parameters()]
    fast = penalty.add_grad_(model)
    fast_grads = [p.grad.clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), start, strict=True):
        p.grad = g.clone()
    params = list(model.parameters())
    dense = sum(
        lam * _value_and_add_grad_(unit, model, params, lam)
        for lam, unit in zip(penalty.lams, penalty.units, strict=True)
    )
    assert float(fast) == float(dense)
    for g, p in zip(fast_grads, model.parameters(), strict=True):
        assert torch.equal(g, p.grad)
