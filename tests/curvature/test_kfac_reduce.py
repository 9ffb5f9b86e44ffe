"""K-FAC-reduce (K8) against stored layer IO, a per-example oracle and the exact Fisher."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel.curvature import KFACApprox, estimate_kfac
from kfacel.positions import valid_positions
from tests._synth import (
    CASES,
    CurvatureCase,
    SharedEncoder,
    select_rows,
    shared_batch,
    split_batches,
)
from tests.oracles import (
    TOL64,
    fisher_block,
    kfac_reduce_factors,
    layer_io,
    per_example_grads,
)


class PooledLinear(nn.Module):
    """Two position-wise Linear layers, a mean over real positions, then a head.

    Deep linear before the pooling, so every use of ``fc1`` and ``fc2`` by an example
    gets the same output gradient: K-FAC-reduce is exact for one example (Eschenhagen
    et al. 2023), K-FAC-expand is not.
    """

    def __init__(self, d: int = 3, h: int = 4, c: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, h)
        self.head = nn.Linear(h, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with valid_positions(mask):
            z = self.fc2(self.fc1(x))  # [N, S, h]
        m = mask[..., None].to(z.dtype)
        pooled = (z * m).sum(1) / m.sum(1).clamp(min=1)  # [N, h]
        return self.head(torch.tanh(pooled))


class SameInputEverywhere(nn.Module):
    """One input vector used at S positions that differ only after the layer."""

    def __init__(self, d: int = 3, h: int = 4, s: int = 5, c: int = 3):
        super().__init__()
        self.s = s
        self.enc = nn.Linear(d, h)
        self.head = nn.Linear(h, c)
        self.register_buffer("offset", torch.linspace(-1.0, 1.0, s * h).view(s, h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, d]
        shared = x.unsqueeze(1).expand(-1, self.s, -1)  # [N, S, d], one input
        z = torch.tanh(self.enc(shared) + self.offset)  # [N, S, h]
        return self.head(z.amax(1))


def _pooled_batch(n: int, padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    mask = torch.ones(n, 5, dtype=torch.bool)
    if padded:
        mask[0, 3:] = False
    x = torch.randn(n, 5, 3, generator=g, dtype=torch.float64)
    return {"x": x, "mask": mask}


def test_shared_positions_and_repeated_calls_match_an_einsum_over_stored_io() -> None:
    """Eq. (K8) by einsum: ā_n = mean of real inputs over both calls, ĝ_n = their sum."""
    torch.manual_seed(0)
    model = SharedEncoder().double()
    batch = shared_batch()  # padding in both sequences
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    fisher = estimate_kfac(model, [(batch, y)], approx="reduce")
    io = layer_io(model, ["enc", "head"], batch, y)
    (xa, ga), (xb, gb) = io["enc"]
    ma, mb = batch["mask_a"].double(), batch["mask_b"].double()
    total = torch.einsum("ns,nsi->ni", ma, xa) + torch.einsum("nt,nti->ni", mb, xb)
    uses = ma.sum(1) + mb.sum(1)  # U_n  [N]
    a_bar = torch.cat([total / uses[:, None], torch.ones_like(uses[:, None])], 1)
    A = torch.einsum("ni,nj->ij", a_bar, a_bar) / 6  # eq. (K8)
    g_hat = torch.einsum("ns,nso->no", ma, ga) + torch.einsum("nt,nto->no", mb, gb)
    G = torch.einsum("no,np->op", g_hat, g_hat) / 6  # eq. (K8)
    assert fisher.approx is KFACApprox.REDUCE
    torch.testing.assert_close(fisher["enc"].A, A, **TOL64)
    torch.testing.assert_close(fisher["enc"].G, G, **TOL64)
    expand = estimate_kfac(model, [(batch, y)])  # one use per example: no difference
    torch.testing.assert_close(fisher["head"].A, expand["head"].A, **TOL64)
    torch.testing.assert_close(fisher["head"].G, expand["head"].G, **TOL64)
    assert expand.approx is KFACApprox.EXPAND


@pytest.mark.parametrize("parts", [1, 2], ids=["one-batch", "two-batches"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_factors_equal_the_per_example_oracle(
    case: CurvatureCase, kind: str, padded: bool, parts: int
) -> None:
    """Models × kinds × masks × splits: (A, G) of eq. (K8); Embeddings keep (K5)."""
    model, inputs, y = case.make(padded)
    fisher = estimate_kfac(
        model, split_batches(inputs, y, parts), kind=kind, approx=KFACApprox.REDUCE
    )
    ref = kfac_reduce_factors(
        model, inputs, y, list(case.layers), kind=kind, select=select_rows
    )
    assert set(fisher) == set(case.layers)
    for name, (A, G) in ref.items():
        torch.testing.assert_close(fisher[name].A, A, **TOL64, msg=f"{name}.A")
        torch.testing.assert_close(fisher[name].G, G, **TOL64, msg=f"{name}.G")


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_deep_linear_pooling_is_exact_for_reduce_and_not_for_expand(
    padded: bool,
) -> None:
    """kron(G, A) == the exact Fisher block for one example of a pooled linear stack."""
    torch.manual_seed(0)
    model = PooledLinear().double()
    batch, y = _pooled_batch(1, padded), torch.tensor([1])
    examples = per_example_grads(model, batch, y, kind="exact", select=select_rows)
    reduce = estimate_kfac(model, [(batch, y)], kind="exact", approx="reduce")
    expand = estimate_kfac(model, [(batch, y)], kind="exact")
    for name in ("fc1", "fc2", "head"):
        exact = fisher_block(model, examples, name)
        torch.testing.assert_close(reduce[name].to_dense(), exact, **TOL64)
    for name in ("fc1", "fc2"):  # expand is off where uses differ in their inputs
        exact = fisher_block(model, examples, name)
        err = (expand[name].to_dense() - exact).norm() / exact.norm()
        assert err > 1e-3, name


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_uses_sharing_one_input_are_exact_for_reduce(kind: str) -> None:
    """Every use reads the same input, so ∇W~ = ĝ āᵀ: kron(G, A) == the Fisher block."""
    torch.manual_seed(0)
    model = SameInputEverywhere().double()
    x, y = torch.randn(1, 3, dtype=torch.float64), torch.tensor([2])
    fisher = estimate_kfac(model, [(x, y)], kind=kind, approx="reduce")
    examples = per_example_grads(model, x, y, kind=kind)
    for name in ("enc", "head"):
        torch.testing.assert_close(
            fisher[name].to_dense(), fisher_block(model, examples, name), **TOL64
        )


def test_examples_without_a_real_use_do_not_count_in_the_input_factor() -> None:
    """N_A of eq. (K8): a fully padded example adds nothing to A and only 1/N to G."""
    torch.manual_seed(0)
    model = PooledLinear().double()
    batch, y = _pooled_batch(4, padded=False), torch.tensor([0, 1, 2, 0])
    batch["mask"][2] = False  # example 2 never uses fc1 or fc2
    fisher = estimate_kfac(model, [(batch, y)], approx="reduce")
    keep = torch.tensor([0, 1, 3])
    rest = {k: v[keep] for k, v in batch.items()}
    part = estimate_kfac(model, [(rest, y[keep])], approx="reduce")
    torch.testing.assert_close(fisher["fc1"].A, part["fc1"].A, **TOL64)
    torch.testing.assert_close(fisher["fc1"].G, part["fc1"].G * 3 / 4, **TOL64)


def test_an_unknown_approximation_is_refused() -> None:
    model = PooledLinear().double()
    batch, y = _pooled_batch(2, padded=False), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="middle"):
        estimate_kfac(model, [(batch, y)], approx="middle")
