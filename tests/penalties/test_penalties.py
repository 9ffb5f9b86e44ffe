"""Penalties against dense ``vec(d)ᵀ kron(G, A) vec(d)``; closed-form gradients against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel.consolidation import snapshot
from kfacel.curvature import estimate_diagonal, estimate_kfac
from kfacel.penalties import (
    DiagonalEWCPenalty,
    KFACPenalty,
    L2Penalty,
    NoPenalty,
)
from tests._synth import TinyRanker
from tests.oracles import TOL64


def _setup(seed: int = 0) -> tuple[nn.Module, dict, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyRanker().double()
    ids = torch.randint(0, 6, (6, 5))  # tokens 6..8 unseen: zero-frequency rows
    batch = {"ids": ids, "mask": torch.ones(6, 5, dtype=torch.bool)}
    return model, batch, torch.tensor([0, 1, 2, 0, 1, 2])


def _perturb(model: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _penalties(model, batch, y, damping=0.0):
    anchor = snapshot(model)
    kfac = estimate_kfac(model, [(batch, y)], uncovered="diagonal")
    diag = estimate_diagonal(model, [(batch, y)])
    return (
        {
            "kfac": KFACPenalty(damping=damping).add_task(anchor, kfac, lam=3.0),
            "ewc": DiagonalEWCPenalty(damping=damping).add_task(anchor, diag, lam=3.0),
            "l2": L2Penalty().add_task(anchor, None, lam=3.0),
        },
        anchor,
        kfac,
    )


def test_kfac_penalty_equals_dense_kronecker_quadratic_form() -> None:
    model, batch, y = _setup()
    pens, anchor, fisher = _penalties(model, batch, y, damping=0.5)
    _perturb(model)
    params = dict(model.named_parameters())
    expected = torch.zeros((), dtype=torch.float64)
    for f in fisher.values():
        d = (f.folded(params) - f.folded(anchor)).reshape(-1)
        dense = f.to_dense() + 0.5 * torch.eye(d.numel(), dtype=torch.float64)
        expected = expected + d @ dense @ d
    for name, diag in fisher.diagonal.items():
        d = params[name] - anchor[name]
        expected = expected + ((diag + 0.5) * d * d).sum()
    torch.testing.assert_close(
        pens["kfac"](model), 0.5 * 3.0 * expected.detach(), **TOL64
    )


@pytest.mark.parametrize("which", ["kfac", "ewc", "l2"])
@pytest.mark.parametrize("damping", [0.0, 0.25])
def test_closed_form_gradient_equals_autograd(which: str, damping: float) -> None:
    model, batch, y = _setup()
    pens, _, _ = _penalties(model, batch, y, damping=damping)
    pen = pens[which].add_task(snapshot(model), pens[which].terms[0][1], lam=0.5)
    _perturb(model)
    value = pen(model)
    auto = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    model.zero_grad(set_to_none=True)
    fast = pen.add_grad_(model)
    torch.testing.assert_close(fast, value.detach(), **TOL64)
    for (name, p), g in zip(model.named_parameters(), auto, strict=True):
        expected = torch.zeros_like(p) if g is None else g
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, expected, **TOL64, msg=name)


def test_add_grad_accumulates_onto_existing_gradients() -> None:
    model, batch, y = _setup()
    pens, _, _ = _penalties(model, batch, y)
    _perturb(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    pens["kfac"].add_grad_(model)
    auto = torch.autograd.grad(
        pens["kfac"](model), list(model.parameters()), allow_unused=True
    )
    for p, g in zip(model.parameters(), auto, strict=True):
        expected = 1 + (torch.zeros_like(p) if g is None else g)
        torch.testing.assert_close(p.grad, expected, **TOL64)


@pytest.mark.parametrize("which", ["kfac", "ewc", "l2"])
def test_gradcheck_against_finite_differences(which: str) -> None:
    model, batch, y = _setup()
    pens, _, _ = _penalties(model, batch, y, damping=0.1)
    _perturb(model)
    names = [n for n, _ in model.named_parameters()]
    base = {n: p.detach() for n, p in model.named_parameters()}

    def value(*flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, flat, strict=True))
        return pens[which](_FunctionalModel(params))

    inputs = tuple(base[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(value, inputs, eps=1e-6, atol=1e-5)


class _FunctionalModel(nn.Module):
    """Presents a name->tensor mapping through ``named_parameters`` for gradcheck."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self._params = params

    def named_parameters(self, *args, **kwargs):  # type: ignore[override]
        return iter(self._params.items())

    def parameters(self, *args, **kwargs):  # type: ignore[override]
        return iter(self._params.values())


@pytest.mark.parametrize("which", ["kfac", "ewc", "l2"])
def test_zero_at_the_anchor_and_never_negative(which: str) -> None:
    model, batch, y = _setup()
    pens, _, _ = _penalties(model, batch, y)
    assert float(pens[which](model).detach()) == 0.0
    for seed in range(5):
        _perturb(model, scale=1.0, seed=seed)
        assert float(pens[which](model).detach()) >= 0.0


def test_mismatched_anchor_is_refused_with_names() -> None:
    model, batch, y = _setup()
    pens, _, _ = _penalties(model, batch, y)
    other = TinyRanker(vocab=11).double()
    with pytest.raises(ValueError, match=r"emb\.weight"):
        pens["kfac"](other)


def test_no_penalty_is_zero() -> None:
    model, _, _ = _setup()
    assert float(NoPenalty()(model)) == 0.0
    assert NoPenalty().num_tasks == 0


def test_embedding_rows_that_did_not_move_are_skipped_exactly() -> None:
    """Only rows 1 and 4 move: the fast gradient still equals autograd everywhere."""
    model, batch, y = _setup()
    pens, _, _ = _penalties(model, batch, y)
    with torch.no_grad():
        model.emb.weight[[1, 4]] += 0.3
        model.head.weight += 0.1
    value = pens["kfac"](model)
    auto = torch.autograd.grad(value, [model.emb.weight, model.head.weight])
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(pens["kfac"].add_grad_(model), value.detach(), **TOL64)
    torch.testing.assert_close(model.emb.weight.grad, auto[0], **TOL64)
    torch.testing.assert_close(model.head.weight.grad, auto[1], **TOL64)
    assert model.emb.weight.grad[[0, 2, 3, 5]].abs().max() == 0


def _finite_difference_grad(
    pen: object, model: nn.Module, eps: float = 1e-6, entries: int = 6
) -> dict[str, tuple[torch.Tensor, slice]]:
    """Central differences of ``R(θ)`` (exact up to rounding: R is quadratic).

    Every entry of the embedding table, the first ``entries`` of other parameters.
    """
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.view(-1)
            part = slice(None) if name == "emb.weight" else slice(0, entries)
            gflat = torch.zeros_like(flat[part])
            for j in range(gflat.numel()):
                x = float(flat[j])
                flat[j] = x + eps
                up = float(pen(model))  # type: ignore[operator]
                flat[j] = x - eps
                down = float(pen(model))  # type: ignore[operator]
                flat[j] = x  # exactly as it was
                gflat[j] = (up - down) / (2 * eps)
            out[name] = (gflat, part)
    return out


@pytest.mark.parametrize("which", ["kfac", "ewc", "l2"])
@pytest.mark.parametrize("damping", [0.0, 0.25])
def test_add_grad_equals_finite_differences_and_autograd(
    which: str, damping: float
) -> None:
    """add_grad_ (the trainer's path) against FD and autograd of R, two tasks.

    Embedding rows 0, 2 and 7 did not move (Δ = 0; token 7 also has A = 0).
    """
    model, batch, y = _setup()
    pens, anchor, _ = _penalties(model, batch, y, damping=damping)
    pen = pens[which].add_task(snapshot(model), pens[which].terms[0][1], lam=0.5)
    _perturb(model)
    with torch.no_grad():
        for row in (0, 2, 7):
            model.emb.weight[row] = anchor["emb.weight"][row]
    auto = torch.autograd.grad(pen(model), list(model.parameters()), allow_unused=True)
    fd = _finite_difference_grad(pen, model)
    model.zero_grad(set_to_none=True)
    value = pen.add_grad_(model)
    torch.testing.assert_close(value, pen(model).detach(), **TOL64)
    for (name, p), g in zip(model.named_parameters(), auto, strict=True):
        got = torch.zeros_like(p) if p.grad is None else p.grad
        expected = torch.zeros_like(p) if g is None else g
        torch.testing.assert_close(got, expected, **TOL64, msg=name)
        fd_grad, part = fd[name]
        torch.testing.assert_close(
            got.view(-1)[part], fd_grad, rtol=1e-6, atol=1e-7, msg=name
        )
    unmoved = model.emb.weight.grad[[0, 2, 7]]
    if (
        which != "l2"
    ):  # Δ = 0 rows: only other rows' curvature (through G) can reach them
        assert unmoved[2].abs().max() == 0  # A_7 = 0 and Δ_7 = 0: nothing at all
