"""Factored Tikhonov damping (P4) against dense ``kron(G + γ_G I, A + γ_A I)``."""

from __future__ import annotations

import pytest
import torch

from kfacel.consolidation import snapshot
from kfacel.curvature import estimate_kfac
from kfacel.curvature.factors import (
    LowRankFactor,
    compress_factors,
    dense,
    factored_damping,
)
from kfacel.penalties import KFACPenalty, build_penalty
from kfacel.penalties.strength import Damping
from tests._synth import TinyRanker
from tests.oracles import TOL64
from tests.penalties.test_strength import settings, update_penalty

DELTA = 0.3


def _fisher(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyRanker().double()
    ids = torch.randint(0, 6, (6, 5))  # tokens 6..8 unseen: zero-frequency rows
    batch = {"ids": ids, "mask": torch.ones(6, 5, dtype=torch.bool)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, estimate_kfac(model, [(batch, y)], uncovered="diagonal")


def _dense_damped(A: torch.Tensor, G: torch.Tensor, delta: float) -> torch.Tensor:
    """``kron(G + γ_G I, A + γ_A I)`` from the formula of (P4), written out."""
    A = torch.diag(A) if A.ndim == 1 else A
    pi = ((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0])).sqrt()
    gamma_a, gamma_g = pi * delta**0.5, delta**0.5 / pi
    eye_a = torch.eye(A.shape[0], dtype=A.dtype)
    eye_g = torch.eye(G.shape[0], dtype=G.dtype)
    return torch.kron(G + gamma_g * eye_g, A + gamma_a * eye_a)


def test_damped_block_is_the_kronecker_of_damped_factors_and_adds_delta_i() -> None:
    _, fisher = _fisher()
    assert any(f.A.ndim == 1 for f in fisher.values())  # an Embedding is covered
    for name, f in fisher.items():
        got = f.damped(DELTA).to_dense()
        torch.testing.assert_close(got, _dense_damped(f.A, f.G, DELTA), **TOL64)
        # the product of the two γ is δ: the block holds G ⊗ A + δ I + cross terms
        A = torch.diag(f.A) if f.A.ndim == 1 else f.A
        eye_a, eye_g = torch.eye(A.shape[0]), torch.eye(f.G.shape[0])
        cross = got - f.to_dense() - DELTA * torch.eye(got.shape[0], dtype=got.dtype)
        lhs = cross.double()  # γ_G (I ⊗ A) + γ_A (G ⊗ I), with γ_A γ_G = δ
        basis = torch.stack(
            [torch.kron(eye_g, A).reshape(-1), torch.kron(f.G, eye_a).reshape(-1)], 1
        ).double()
        coef = torch.linalg.lstsq(basis, lhs.reshape(-1, 1)).solution
        torch.testing.assert_close(basis @ coef, lhs.reshape(-1, 1), **TOL64)
        assert float(coef[0] * coef[1]) == pytest.approx(DELTA, rel=1e-9), name


def test_unseen_embedding_rows_get_curvature_from_the_damping() -> None:
    _, fisher = _fisher()
    emb = next(f for f in fisher.values() if f.A.ndim == 1)
    assert emb.support is not None
    assert len(emb.support) < emb.A.shape[0]
    damped = emb.damped(DELTA)
    assert damped.support is not None
    assert len(damped.support) == emb.A.shape[0]


def test_factored_penalty_equals_the_dense_form_and_its_gradient_autograd() -> None:
    model, fisher = _fisher()
    anchor = snapshot(model)
    pen = KFACPenalty(damping=DELTA, damping_kind="factored").add_task(
        anchor, fisher, lam=2.0
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    params = dict(model.named_parameters())
    expected = torch.zeros((), dtype=torch.float64)
    for f in fisher.values():
        d = (f.folded(params) - f.folded(anchor)).reshape(-1).detach()
        expected = expected + d @ _dense_damped(f.A, f.G, DELTA) @ d
    for name, diag in fisher.diagonal.items():
        d = (params[name] - anchor[name]).detach()
        expected = expected + ((diag + DELTA) * d * d).sum()
    value = pen(model)
    torch.testing.assert_close(value.detach(), 0.5 * 2.0 * expected, **TOL64)
    auto = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(pen.add_grad_(model), value.detach(), **TOL64)
    for (name, p), a in zip(model.named_parameters(), auto, strict=True):
        want = torch.zeros_like(p) if a is None else a
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, want, **TOL64, msg=name)


def test_zero_damping_leaves_the_factors_as_they_are() -> None:
    _, fisher = _fisher()
    same = factored_damping(fisher, 0.0)
    for name, f in fisher.items():
        assert torch.equal(same[name].A, f.A)
        assert torch.equal(same[name].G, f.G)


@pytest.mark.parametrize("rank", [1, 2, 64])
def test_low_rank_factors_are_damped_as_the_dense_matrices_they_stand_for(rank) -> None:
    """(P4) on a compressed block equals (P4) on ``dense(A)``, ``dense(G)`` (K10).

    At a rank above every factor's size the block is the whole one, damped alike.
    """
    model, fisher = _fisher()
    low = compress_factors(fisher, rank)
    assert (rank < 64) == any(isinstance(f.G, LowRankFactor) for f in low.values())
    damped = factored_damping(low, DELTA)
    for name, f in low.items():
        expected = _dense_damped(dense(f.A), dense(f.G), DELTA)
        torch.testing.assert_close(damped[name].to_dense(), expected, **TOL64)
        if rank == 64:
            whole = fisher[name].damped(DELTA).to_dense()
            torch.testing.assert_close(damped[name].to_dense(), whole, **TOL64)
    pen = KFACPenalty(damping=DELTA, damping_kind="factored").add_task(
        snapshot(model), low, lam=1.0
    )  # accepted where it was refused
    assert float(pen(model).detach()) == 0.0


def test_factored_damping_is_refused_where_it_does_not_apply() -> None:
    model, fisher = _fisher()
    with pytest.raises(ValueError, match="needs penalty kfac, not 'ewc'"):
        settings("ewc", Damping(DELTA, "factored"))
    with pytest.raises(ValueError, match="damping_kind must be one of"):
        KFACPenalty(damping=DELTA, damping_kind="spectral")
    from kfacel.consolidation import TaskState

    state = TaskState(task="A", method="kfac", anchor=snapshot(model), curvature=fisher)
    with pytest.raises(ValueError, match="needs penalty kfac, not 'l2'"):
        build_penalty("l2", [state], [1.0], damping_kind="factored")


def test_a_default_kfac_update_penalizes_with_the_default_factored_damping() -> None:
    from kfacel.consolidation import TaskState
    from kfacel.penalties.strength import DEFAULT_KFAC_DAMPING

    model, fisher = _fisher()
    state = TaskState(task="A", method="kfac", anchor=snapshot(model), curvature=fisher)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    default = update_penalty(settings("kfac", lam=2.0), [state], 10)
    by_hand = KFACPenalty(
        damping=DEFAULT_KFAC_DAMPING, damping_kind="factored"
    ).add_task(state.anchor, fisher, lam=2.0)
    undamped = update_penalty(
        settings("kfac", Damping.default_for("kfac", 0.0), lam=2.0), [state], 10
    )
    torch.testing.assert_close(default(model), by_hand(model), **TOL64)
    assert float(default(model).detach()) > float(
        undamped(model).detach()
    )  # δ adds curvature
