"""Selective synaptic dampening from consolidation states, against hand and brute force."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel import TaskState, estimate_diagonal, estimate_kfac, snapshot
from kfacel.consolidation.forget import (
    diagonal_importance,
    forget_task,
    kfac_ssd_dampening,
    ssd_dampening,
    ssd_scale,
)
from kfacel.curvature.factors import DiagonalFisher, compress_factors
from kfacel.types import FisherKind
from tests._synth import MLP, EmbedNet, TinyRanker
from tests.oracles import TOL64, fisher_block, per_example_grads


def _diag_state(task: str, theta: list[float], imp: list[float], n: int) -> TaskState:
    anchor = {"w": torch.tensor(theta, dtype=torch.float64)}
    fisher = DiagonalFisher(
        {"w": torch.tensor(imp, dtype=torch.float64)}, FisherKind.EMPIRICAL, n
    )
    return TaskState(task, "ewc", anchor, fisher)


def test_ssd_dampens_a_two_parameter_model_by_hand() -> None:
    """(F1)-(F2): []_f = (4, 1, 6); []_r = ¼·(2, 2, 4) + ¾·(0, 2, 0) = (0.5, 2, 1)."""
    a = _diag_state("A", [9.0, 9.0, 9.0], [4.0, 1.0, 6.0], n=10)
    b = _diag_state("B", [1.0, 1.0, 1.0], [2.0, 2.0, 4.0], n=1)
    c = _diag_state("C", [5.0, 5.0, 5.0], [0.0, 2.0, 0.0], n=3)
    theta = {"w": torch.tensor([2.0, 3.0, -1.0], dtype=torch.float64)}
    new, kept, _ = forget_task(theta, [b, a, c], "A", method="ssd", alpha=2, lam=1.5)
    # coordinate 0: 4 > 2·0.5, β = 1.5·0.5/4; 1: 1 < 2·2, kept; 2: 6 > 2·1, β = 1.5/6
    expected = torch.tensor([2.0 * 0.1875, 3.0, -1.0 * 0.25], dtype=torch.float64)
    torch.testing.assert_close(new["w"], expected, **TOL64)
    assert [s.task for s in kept] == ["B", "C"]
    torch.testing.assert_close(kept[0].anchor["w"], b.anchor["w"], **TOL64)  # before A
    anchor_c = torch.tensor([5.0 * 0.1875, 5.0, 5.0 * 0.25], dtype=torch.float64)
    torch.testing.assert_close(kept[1].anchor["w"], anchor_c, **TOL64)  # after A


def test_ssd_scale_keeps_what_is_not_selected_and_caps_at_one() -> None:
    f = torch.tensor([10.0, 10.0, 0.0, 3.0])
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    beta = ssd_scale(f, r, alpha=5.0, lam=20.0)
    assert beta.tolist() == [1.0, 0.0, 1.0, 1.0]  # λr/f = 2 → 1; r = 0 → 0; 3 < 5


def test_unknown_task_and_a_lone_task_are_refused_in_one_line() -> None:
    a = _diag_state("A", [1.0], [1.0], n=1)
    b = _diag_state("B", [1.0], [1.0], n=1)
    theta = {"w": torch.ones(1, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"task 'X'; known: 'A', 'B'$"):
        forget_task(theta, [a, b], "X")
    with pytest.raises(ValueError, match="only consolidated task"):
        forget_task(theta, [a], "A")
    with pytest.raises(ValueError, match="kfac-ssd needs task 'A'"):
        forget_task(theta, [a, b], "A", method="kfac-ssd")


def _linear_states(seed: int = 0):
    """A one-layer linear model; A's state from one example (K-FAC is exact there)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 3)).double()
    xa, ya = torch.randn(1, 3, dtype=torch.float64), torch.tensor([1])
    xb, yb = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    fa = estimate_kfac(model, [(xa, ya)], kind="exact")
    fb = estimate_kfac(model, [(xb, yb)], kind="exact")
    a = TaskState("A", "kfac", snapshot(model), fa)
    b = TaskState("B", "kfac", snapshot(model), fb)
    return model, (xa, ya), a, b


def _kron_basis(state: TaskState, name: str) -> torch.Tensor:
    f = state.curvature[name]
    _, QG = torch.linalg.eigh(f.G)
    _, QA = torch.linalg.eigh(f.A)
    return torch.kron(QG, QA)  # Q = Q_G ⊗ Q_A for row-major vec(W~) (K2)


def test_kronecker_importance_is_the_exact_fisher_in_the_eigenbasis() -> None:
    """(F4)-(F5) against diag(Qᵀ F Q) with dense F: A's exact Fisher, B's K-FAC block."""
    model, (xa, ya), a, b = _linear_states()
    exact = fisher_block(model, per_example_grads(model, xa, ya, kind="exact"), "0")
    torch.testing.assert_close(a.curvature["0"].to_dense(), exact, **TOL64)  # exact
    Q = _kron_basis(a, "0")
    f_imp = torch.diagonal(Q.T @ exact @ Q)  # A's exact Fisher in its eigenbasis
    r_imp = torch.diagonal(Q.T @ b.curvature["0"].to_dense() @ Q)
    alpha, lam = 3.0, 0.5
    beta = ssd_scale(f_imp, r_imp, alpha=alpha, lam=lam)
    assert 0 < int((beta < 1).sum()) < beta.numel()  # the case selects some, not all
    layer = model[0]
    w = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().reshape(-1)
    expected = Q @ (beta * (Q.T @ w))  # dampen in the basis, rotate back
    new, _, _ = forget_task(
        dict(model.named_parameters()), [a, b], "A", alpha=alpha, lam=lam
    )
    got = torch.cat([new["0.weight"], new["0.bias"][:, None]], 1).reshape(-1)
    torch.testing.assert_close(got.detach(), expected, **TOL64)


def test_kronecker_ssd_leaves_unselected_weights_exactly() -> None:
    model, _, a, b = _linear_states()
    new, _, d = forget_task(dict(model.named_parameters()), [a, b], "A", alpha=1e30)
    assert d.dampened()[0] == 0
    assert torch.equal(new["0.weight"], model[0].weight)
    assert torch.equal(new["0.bias"], model[0].bias)


def test_diagonal_importance_of_kfac_is_the_diagonal_of_the_kronecker_product() -> None:
    """(F3) on every layer kind, low-rank factors (K10) included."""
    torch.manual_seed(0)
    model = TinyRanker().double()
    batch = {"ids": torch.randint(0, 9, (6, 5)), "mask": torch.ones(6, 5, dtype=bool)}
    fisher = estimate_kfac(model, [(batch, torch.tensor([0, 1, 2, 0, 1, 2]))])
    for f in (fisher, compress_factors(fisher, 2)):
        state = TaskState("A", "kfac", snapshot(model), f)
        imp = diagonal_importance(state)
        for layer in f.values():
            d = torch.diagonal(layer.to_dense()).reshape(layer.shape)
            expected = layer.unfolded(d, state.anchor[layer.weight].shape)
            for p, t in expected.items():
                torch.testing.assert_close(imp[p], t, **TOL64)


def test_kfac_ssd_reads_a_diagonal_retained_state_in_the_rotated_basis() -> None:
    """(F5) for an ewc term: diag(Qᵀ diag(d) Q) on a dense basis, an Embedding too."""
    torch.manual_seed(0)
    model = EmbedNet().double()
    ids, y = torch.randint(0, 7, (6, 4)), torch.randint(0, 3, (6,))
    a = TaskState(
        "A", "kfac", snapshot(model), estimate_kfac(model, [(ids[:3], y[:3])])
    )
    diag = estimate_diagonal(model, [(ids[3:], y[3:])])
    b = TaskState("B", "ewc", snapshot(model), diag)
    d = kfac_ssd_dampening(a, [b], alpha=2.0, lam=1.0)
    assert [x.layer for x in d.layers] == list(a.curvature.values())
    for layer, f in zip(d.layers, a.curvature.values(), strict=True):
        eye = torch.eye(f.shape[1], dtype=torch.float64)
        QA = eye if layer.QA is None else layer.QA  # an Embedding's A is diagonal (K6)
        Q = torch.kron(layer.QG.contiguous(), QA.contiguous())
        r = f.folded(dict(diag)).reshape(-1)
        r_rot = torch.diagonal(Q.T @ torch.diag(r) @ Q)
        f_rot = torch.diagonal(Q.T @ f.to_dense() @ Q)
        beta = ssd_scale(f_rot, r_rot, alpha=2.0, lam=1.0)
        torch.testing.assert_close(layer.scale.reshape(-1), beta, **TOL64)


def test_ssd_with_one_kfac_layer_matches_the_dense_diagonal() -> None:
    torch.manual_seed(1)
    model = MLP().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    a = TaskState("A", "kfac", snapshot(model), estimate_kfac(model, [(x[:2], y[:2])]))
    b = TaskState("B", "kfac", snapshot(model), estimate_kfac(model, [(x[2:], y[2:])]))
    d = ssd_dampening(a, [b], alpha=2.0, lam=1.0)
    fa, fb = a.curvature["fc1"], b.curvature["fc1"]
    f = torch.diagonal(fa.to_dense()).reshape(fa.shape)
    r = torch.diagonal(fb.to_dense()).reshape(fb.shape)
    beta = ssd_scale(f, r, alpha=2.0, lam=1.0)
    torch.testing.assert_close(d.params["fc1.weight"], beta[:, :-1], **TOL64)
    torch.testing.assert_close(d.params["fc1.bias"], beta[:, -1], **TOL64)
