"""K-FAC factors against the brute-force Fisher and an independent einsum over layer IO."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kfacel.curvature import _capture, estimate_diagonal, estimate_kfac
from kfacel.positions import RowLayout, regrouped_rows, row_layout, rows_laid_out
from kfacel.types import NonFiniteCurvatureError
from tests._synth import (
    CASES,
    MLP,
    ConvNet,
    CurvatureCase,
    EmbedNet,
    PositionNet,
    SharedEncoder,
    TwoHeads,
    select_rows,
    shared_batch,
    split_batches,
)
from tests.oracles import (
    TOL64,
    fisher_block,
    kfac_factors,
    layer_io,
    per_example_grads,
)


@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("bias", [True, False])
def test_one_example_equals_the_exact_fisher_block(kind: str, bias: bool) -> None:
    """K-FAC is exact for N = 1 without shared positions: kron(G, A) == F block (K5)."""
    torch.manual_seed(0)
    model = MLP(bias=bias).double()
    x, y = torch.randn(1, 4, dtype=torch.float64), torch.tensor([2])
    fisher = estimate_kfac(model, [(x, y)], kind=kind)
    examples = per_example_grads(model, x, y, kind=kind)
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(
            fisher[name].to_dense(), fisher_block(model, examples, name), **TOL64
        )
    assert fisher["fc1"].A.shape == ((5, 5) if bias else (4, 4))


def test_shared_positions_and_repeated_calls_match_stored_layer_io() -> None:
    """Expand convention (K5): A over all real uses, G summed over uses, per example."""
    torch.manual_seed(0)
    model = SharedEncoder().double()
    batch = shared_batch()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    fisher = estimate_kfac(model, [(batch, y)])
    io = layer_io(model, ["enc", "head"], batch, y)
    (xa, ga), (xb, gb) = io["enc"]
    rows_a = torch.cat([xa, torch.ones_like(xa[..., :1])], -1)[batch["mask_a"]]
    rows_b = torch.cat([xb, torch.ones_like(xb[..., :1])], -1)[batch["mask_b"]]
    rows = torch.cat([rows_a, rows_b])
    A = torch.einsum("ri,rj->ij", rows, rows) / rows.shape[0]
    g = torch.cat([ga[batch["mask_a"]], gb[batch["mask_b"]]])
    G = torch.einsum("ro,rp->op", g, g) / y.shape[0]
    torch.testing.assert_close(fisher["enc"].A, A, **TOL64)
    torch.testing.assert_close(fisher["enc"].G, G, **TOL64)
    assert fisher.num_examples == 6


def test_batches_accumulate_like_one_batch() -> None:
    torch.manual_seed(0)
    model = MLP().double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    whole = estimate_kfac(model, [(x, y)])
    split = estimate_kfac(model, [(x[:3], y[:3]), (x[3:], y[3:])])
    for name in whole:
        torch.testing.assert_close(whole[name].A, split[name].A, **TOL64)
        torch.testing.assert_close(whole[name].G, split[name].G, **TOL64)


def test_conv1d_equals_linear_on_unfolded_patches() -> None:
    torch.manual_seed(0)
    conv = ConvNet().double()
    lin = ConvNet(as_linear=True).double()
    with torch.no_grad():
        lin.lin.weight.copy_(conv.conv.weight.reshape(4, 9))
        lin.lin.bias.copy_(conv.conv.bias)
        lin.head.load_state_dict(conv.head.state_dict())
    x, y = torch.randn(5, 3, 7, dtype=torch.float64), torch.randint(0, 3, (5,))
    fc, fl = estimate_kfac(conv, [(x, y)]), estimate_kfac(lin, [(x, y)])
    torch.testing.assert_close(fc["conv"].A, fl["lin"].A, **TOL64)
    torch.testing.assert_close(fc["conv"].G, fl["lin"].G, **TOL64)


def test_embedding_equals_linear_on_one_hot_inputs() -> None:
    torch.manual_seed(0)
    emb, lin = EmbedNet().double(), EmbedNet(one_hot=True).double()
    with torch.no_grad():
        lin.lin.weight.copy_(emb.emb.weight.T)
        lin.head.load_state_dict(emb.head.state_dict())
    ids = torch.tensor([[0, 1, 1, 3], [3, 3, 5, 0], [6, 1, 0, 0]])
    y = torch.tensor([0, 2, 1])
    fe, fl = estimate_kfac(emb, [(ids, y)]), estimate_kfac(lin, [(ids, y)])
    torch.testing.assert_close(torch.diag(fe["emb"].A), fl["lin"].A, **TOL64)
    torch.testing.assert_close(fe["emb"].G, fl["lin"].G, **TOL64)
    freq = torch.bincount(ids.flatten(), minlength=7).double() / ids.numel()
    torch.testing.assert_close(fe["emb"].A, freq, **TOL64)  # token frequencies (K6)


def test_padding_positions_do_not_count() -> None:
    """A masked position changes neither factor; dropping it from the input agrees."""
    torch.manual_seed(0)
    model = SharedEncoder().double()
    batch = shared_batch(n=1, s=4, t=2)
    batch["mask_a"] = torch.tensor([[True, True, False, False]])
    batch["mask_b"] = torch.ones(1, 2, dtype=torch.bool)
    y = torch.tensor([1])
    masked = estimate_kfac(model, [(batch, y)])
    short = dict(batch, a=batch["a"][:, :2], mask_a=batch["mask_a"][:, :2])
    dropped = estimate_kfac(model, [(short, y)])
    torch.testing.assert_close(masked["enc"].A, dropped["enc"].A, **TOL64)
    torch.testing.assert_close(masked["enc"].G, dropped["enc"].G, **TOL64)


def test_leaves_no_side_effects() -> None:
    torch.manual_seed(0)
    model = MLP().double()
    model.fc2.eval()  # a mixed mode must come back as it was
    x, y = torch.randn(4, 4, dtype=torch.float64), torch.randint(0, 3, (4,))
    F.cross_entropy(model(x), y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    estimate_kfac(model, [(x, y)], kind="exact")
    for k, p in model.named_parameters():
        assert torch.equal(p.grad, grads[k]), k
        assert torch.equal(p.detach(), params[k]), k
    assert model.training
    assert model.fc1.training
    assert not model.fc2.training
    assert all(not m._forward_hooks for m in model.modules())


def test_non_finite_statistics_name_the_layer() -> None:
    model = MLP().double()
    x = torch.randn(2, 4, dtype=torch.float64)
    x[0, 0] = float("inf")
    with pytest.raises(NonFiniteCurvatureError, match="fc1"):
        estimate_kfac(model, [(x, torch.tensor([0, 1]))])
    with pytest.raises(NonFiniteCurvatureError, match="fc1"):
        estimate_diagonal(model, [(x, torch.tensor([0, 1]))])


class WithNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.gru = nn.GRUCell(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.gru(torch.tanh(self.fc(x)))))


def test_uncovered_parameters_are_listed_and_unsupported_layers_reported() -> None:
    model = WithNorm().double()
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    with pytest.warns(UserWarning, match="gru"):
        fisher = estimate_kfac(model, [(x, y)])
    assert set(fisher) == {"fc", "head"}
    assert {"norm.weight", "norm.bias", "gru.weight_ih"} <= set(fisher.uncovered)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="gru"):
            estimate_kfac(model, [(x, y)], uncovered="diagonal")


def test_uncovered_diagonal_gives_layernorm_its_exact_diagonal() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    fisher = estimate_kfac(model, [(x, y)], uncovered="diagonal")
    examples = per_example_grads(model, x, y, kind="empirical")
    for k in ("1.weight", "1.bias"):
        ref = torch.stack([items[0][1][k] ** 2 for items in examples]).mean(0)
        torch.testing.assert_close(fisher.diagonal[k], ref, **TOL64)


@pytest.mark.parametrize("parts", [1, 2], ids=["one-batch", "two-batches"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_factors_equal_the_per_example_oracle(
    case: CurvatureCase, kind: str, padded: bool, parts: int
) -> None:
    """Models × Fisher kinds × masks × batch splits: (A, G) of eq. (K5) by brute force."""
    model, inputs, y = case.make(padded)
    fisher = estimate_kfac(model, split_batches(inputs, y, parts), kind=kind)
    ref = kfac_factors(
        model, inputs, y, list(case.layers), kind=kind, select=select_rows
    )
    assert set(fisher) == set(case.layers)
    for name, (A, G) in ref.items():
        torch.testing.assert_close(fisher[name].A, A, **TOL64, msg=f"{name}.A")
        torch.testing.assert_close(fisher[name].G, G, **TOL64, msg=f"{name}.G")


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_batch_shared_inputs_equal_their_expansion(padded: bool) -> None:
    """Position ids [1, S] and a [1, S, d] Linear input are every example's (K5)."""
    torch.manual_seed(0)
    shared = PositionNet(shared=True).double()
    expanded = PositionNet(shared=False).double()
    expanded.load_state_dict(shared.state_dict())
    _, batch, y = CASES[-1].make(padded)
    fs, fe = estimate_kfac(shared, [(batch, y)]), estimate_kfac(expanded, [(batch, y)])
    for name in ("pos", "wave", "tok", "head"):
        torch.testing.assert_close(fs[name].A, fe[name].A, **TOL64, msg=name)
        torch.testing.assert_close(fs[name].G, fe[name].G, **TOL64, msg=name)
    real = batch["mask"].sum(0).double()  # real uses of each position
    torch.testing.assert_close(fs["pos"].A, real / real.sum(), **TOL64)
    ds, de = (
        estimate_diagonal(shared, [(batch, y)]),
        estimate_diagonal(expanded, [(batch, y)]),
    )
    for name in de:
        torch.testing.assert_close(ds[name], de[name], **TOL64, msg=name)
    with torch.no_grad():  # the hooks change no output
        torch.testing.assert_close(shared(**batch), expanded(**batch), **TOL64)


def test_a_first_dimension_that_is_no_batch_dimension_is_refused_with_its_name() -> (
    None
):
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.pos(torch.arange(3 * x.shape[1]).reshape(3, -1) % 5)  # [3, S, 3]
            return self.head((x + p.sum(0)).mean(1))

    x = torch.randn(4, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'pos'.*\(3, 5\)"):
        estimate_kfac(Odd().double(), [(x, torch.tensor([0, 1, 0, 1]))])


class Chunked(nn.Module):
    """A token model that may run its rows in chunks of 3, as ``row_layout`` allows."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, S, 3]
        if row_layout() is RowLayout.OWN:
            with regrouped_rows():
                h = torch.cat([self.tok(part) for part in x.split(3)])
        else:
            h = self.tok(x)
        return self.head(torch.tanh(h).mean(1))


class WholeExamples(nn.Module):
    """``m`` made to run whole examples in each call (``RowLayout.BY_EXAMPLE``)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with rows_laid_out(RowLayout.BY_EXAMPLE):
            return self.m(x)


def test_regrouped_rows_give_the_factors_of_whole_examples() -> None:
    """Under K5 a call may hold any rows, each one example's own: the same sums."""
    model = Chunked().double()
    x, y = torch.randn(4, 5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    calls: list[int] = []
    model.tok.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    chunked = estimate_kfac(model, [(x, y)])
    assert calls == [3, 1]  # 4 examples in chunks of 3: neither a multiple of 4
    whole = estimate_kfac(WholeExamples(model), [(x, y)])
    assert calls[2:] == [4]
    for name in ("tok", "head"):
        torch.testing.assert_close(chunked[name].A, whole[f"m.{name}"].A, **TOL64)
        torch.testing.assert_close(chunked[name].G, whole[f"m.{name}"].G, **TOL64)
    estimate_kfac(model, [(x, y)], approx="reduce")  # K8 sums per example
    assert calls[3:] == [4]


def test_regrouped_rows_are_refused_where_examples_are_needed() -> None:
    """Per-example gradients (diagonal Fisher) need whole examples in each call."""

    class Stubborn(Chunked):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with regrouped_rows():  # ignores row_layout()
                h = torch.cat([self.tok(part) for part in x.split(3)])
            return self.head(torch.tanh(h).mean(1))

    x, y = torch.randn(4, 5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match=r"'tok'.*regrouped rows"):
        estimate_diagonal(Stubborn().double(), [(x, y)])


def test_layers_reading_one_input_share_its_statistic_once_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """q, k and v of one input: one Σ ā āᵀ per batch, added to three own totals."""
    calls: list[int] = []
    real = _capture.input_statistic

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_capture, "input_statistic", counting)
    model = nn.ModuleDict({k: nn.Linear(3, 2) for k in "qkv"}).double()
    model.forward = lambda x: sum(model[k](x) for k in "qkv")  # type: ignore[method-assign]
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    fisher = estimate_kfac(model, [(x[:3], y[:3]), (x[3:], y[3:])])
    assert len(calls) == 2  # one per batch
    a = torch.cat([x, torch.ones(6, 1, dtype=torch.float64)], 1)
    for k in "qkv":
        torch.testing.assert_close(fisher[k].A, a.T @ a / 6, **TOL64)
    assert fisher["q"].A.data_ptr() != fisher["k"].A.data_ptr()  # own tensors


def test_sampled_is_within_its_monte_carlo_error_of_exact() -> None:
    """S one-draw estimates of G: their mean is within 5 σ/√S of the exact G (K4).

    σ is the entrywise standard deviation of the draws themselves, so the tolerance
    follows from the sample count; the empirical Fisher is farther away than that.
    """
    torch.manual_seed(0)
    model = MLP().double()
    x = torch.randn(4, 4, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    draws = 64
    gen = torch.Generator().manual_seed(0)
    single = [
        estimate_kfac(model, [(x, y)], kind="sampled", generator=gen)
        for _ in range(draws)
    ]
    pooled = estimate_kfac(
        model,
        [(x, y)] * draws,
        kind="sampled",
        generator=torch.Generator().manual_seed(0),
    )
    exact = estimate_kfac(model, [(x, y)], kind="exact")
    empirical = estimate_kfac(model, [(x, y)], kind="empirical")
    for name in exact:
        Gs = torch.stack([f[name].G for f in single])  # [S, o, o]
        torch.testing.assert_close(pooled[name].G, Gs.mean(0), **TOL64)
        bound = 5 * Gs.std(0) / draws**0.5 + 1e-12  # [o, o]
        assert ((Gs.mean(0) - exact[name].G).abs() <= bound).all(), name
        assert ((empirical[name].G - exact[name].G).abs() > bound).any(), name


@pytest.mark.slow
def test_sampled_approaches_exact() -> None:
    """Monte Carlo error of G shrinks like 1/sqrt(draws); 4000 draws: within 10%."""
    torch.manual_seed(0)
    model = MLP().double()
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    exact = estimate_kfac(model, [(x, y)], kind="exact")
    gen = torch.Generator().manual_seed(0)
    sampled = estimate_kfac(model, [(x, y)] * 500, kind="sampled", generator=gen)
    for name in exact:
        err = (sampled[name].G - exact[name].G).norm() / exact[name].G.norm()
        assert err < 0.1, (name, float(err))


def test_a_layer_skipped_in_a_later_batch_keeps_its_own_input_statistics() -> None:
    """A layer k's A is k's own inputs' Σ ā āᵀ / R, never q's later batches (K5)."""
    torch.manual_seed(0)
    model = TwoHeads().double()
    x1 = torch.randn(8, 3, dtype=torch.float64)
    x2 = 10 + torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    fisher = estimate_kfac(model, [((x1, True), y), ((x2, False), y)])
    ones = torch.ones(8, 1, dtype=torch.float64)
    a1 = torch.cat([x1, ones], 1)  # [N, i + 1]
    a12 = torch.cat([a1, torch.cat([x2, ones], 1)])
    torch.testing.assert_close(fisher["k"].A, a1.T @ a1 / 8, **TOL64)
    torch.testing.assert_close(fisher["q"].A, a12.T @ a12 / 16, **TOL64)


def test_factors_are_exactly_symmetric_so_states_round_trip() -> None:
    # BLAS sums of outer products need not be bitwise symmetric; states keep a triangle
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(37, 29), torch.nn.Tanh(), torch.nn.Linear(29, 5)
    )
    x = torch.randn(257, 37, dtype=torch.float64)
    model = model.double()
    fisher = estimate_kfac(model, [(x, torch.randint(0, 5, (257,)))], kind="empirical")
    for f in fisher.values():
        assert torch.equal(f.A, f.A.T)
        assert torch.equal(f.G, f.G.T)
