"""Low-rank Kronecker factors (K10): against the dense matrices they stand for.

``LowRankFactor.of(M, k)`` keeps M's top-k eigenpairs and the trace; at k = p it is M.
A compressed block's product ``G d A`` and quadratic form equal those of
``kron(dense(G), dense(A))`` written out; the K-FAC penalty's value and closed-form
gradient on a compressed Fisher equal autograd through that dense matrix.
"""

from __future__ import annotations

import pytest
import torch

from kfacel import KFACPenalty, compress_factors, estimate_kfac, snapshot
from kfacel.curvature.factors import KroneckerFactors, LowRankFactor, dense
from kfacel.curvature.layers import LayerKind
from tests._synth import TinyRanker


def _psd(p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p, 2 * p, generator=g, dtype=torch.float64)
    return x @ x.T / (2 * p)


def test_full_rank_is_the_matrix_and_lower_rank_keeps_top_pairs_and_trace() -> None:
    m = _psd(6, 0)
    torch.testing.assert_close(LowRankFactor.of(m, 6).dense(), m)
    eig, vec = torch.linalg.eigh(m)
    low = LowRankFactor.of(m, 2)
    d = low.dense()
    torch.testing.assert_close(torch.trace(d), torch.trace(m))
    for j in (-1, -2):  # the two largest eigenpairs are kept exactly
        torch.testing.assert_close(d @ vec[:, j], eig[j] * vec[:, j])
    rest = torch.linalg.eigvalsh(d)[:4]  # the others become their mean
    torch.testing.assert_close(rest, eig[:4].mean().expand(4))
    x = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(low.left(x), d @ x)
    torch.testing.assert_close(low.right(x.T), x.T @ d)


@pytest.mark.parametrize("kind", [LayerKind.LINEAR, LayerKind.EMBEDDING])
def test_compressed_block_equals_the_dense_kronecker_product(kind) -> None:
    o, i = 5, 7
    A = _psd(i, 1).diagonal().clone() if kind is LayerKind.EMBEDDING else _psd(i, 1)
    if kind is LayerKind.EMBEDDING:
        A[2] = 0.0  # a token the task never saw
    block = KroneckerFactors(A, _psd(o, 2), kind, "w").compressed(3)
    assert isinstance(block.G, LowRankFactor)
    assert block.G.rank == 3
    assert isinstance(block.A, LowRankFactor) == (kind is LayerKind.LINEAR)
    d = torch.randn(o, i, dtype=torch.float64)
    Ad = dense(block.A)
    Ad = torch.diag(Ad) if Ad.ndim == 1 else Ad
    full = torch.kron(dense(block.G), Ad)
    vec = d.reshape(-1)  # row-major vec (K2)
    torch.testing.assert_close(block.apply(d).reshape(-1), full @ vec)
    torch.testing.assert_close(block.quadratic_form(d), vec @ full @ vec)
    torch.testing.assert_close(block.to_dense(), full)


def test_penalty_on_a_compressed_fisher_matches_autograd_and_the_dense_form() -> None:
    torch.manual_seed(0)
    model = TinyRanker().double()
    batch = {"ids": torch.randint(0, 9, (6, 5)), "mask": torch.ones(6, 5, dtype=bool)}
    fisher = compress_factors(
        estimate_kfac(model, [(batch, torch.tensor([0, 1, 2, 0, 1, 2]))]), 2
    )
    assert any(isinstance(f.A, LowRankFactor) for f in fisher.values())
    penalty = KFACPenalty().add_task(snapshot(model), fisher, lam=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = dict(model.named_parameters())
    anchor = penalty.terms[0][0]
    want = 0.0
    for f in fisher.values():
        vec = (f.folded(params) - f.folded(anchor)).reshape(-1)
        want = want + 0.5 * 3.0 * vec @ f.to_dense() @ vec
    value = penalty(model)
    torch.testing.assert_close(value, want)
    value.backward()
    auto = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    closed = penalty.add_grad_(model)
    torch.testing.assert_close(closed, want.detach())
    for name, g in auto.items():
        torch.testing.assert_close(params[name].grad, g, msg=name)


def test_a_rank_below_one_is_refused() -> None:
    torch.manual_seed(0)
    model = TinyRanker().double()
    batch = {"ids": torch.randint(0, 9, (2, 5)), "mask": torch.ones(2, 5, dtype=bool)}
    fisher = estimate_kfac(model, [(batch, torch.tensor([0, 1]))])
    with pytest.raises(ValueError, match="factor rank must be >= 1"):
        compress_factors(fisher, 0)
