"""K-FAC factors against the brute-force Fisher and an independent einsum over layer IO."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kfacel.curvature import estimate_diagonal, estimate_kfac
from kfacel.positions import valid_positions
from kfacel.types import NonFiniteCurvatureError
from tests.oracles import TOL64, fisher_block, layer_io, per_example_grads


class MLP(nn.Module):
    def __init__(self, d_in: int = 4, h: int = 5, c: int = 3, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_in, h, bias=bias)
        self.fc2 = nn.Linear(h, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class SharedEncoder(nn.Module):
    """One Linear used at every position of two inputs (mention and candidates)."""

    def __init__(self, d: int = 3, h: int = 4, c: int = 3):
        super().__init__()
        self.enc = nn.Linear(d, h)
        self.head = nn.Linear(2 * h, c)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ma, mb = batch["mask_a"], batch["mask_b"]
        with valid_positions(ma):
            ha = torch.tanh(self.enc(batch["a"]))  # [N, S, h]
        with valid_positions(mb):
            hb = torch.tanh(self.enc(batch["b"]))  # [N, T, h]
        pa = (ha * ma[..., None]).sum(1) / ma.sum(1, keepdim=True)
        pb = (hb * mb[..., None]).sum(1) / mb.sum(1, keepdim=True)
        return self.head(torch.cat([pa, pb], -1))


def _shared_batch(n: int = 6, s: int = 5, t: int = 3, d: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    mask_a = torch.rand(n, s, generator=g) > 0.3
    mask_a[:, 0] = True
    mask_b = torch.ones(n, t, dtype=torch.bool)
    mask_b[0, -1] = False
    return {
        "a": torch.randn(n, s, d, generator=g, dtype=torch.float64),
        "b": torch.randn(n, t, d, generator=g, dtype=torch.float64),
        "mask_a": mask_a,
        "mask_b": mask_b,
    }


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
    batch = _shared_batch()
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


class ConvNet(nn.Module):
    def __init__(self, as_linear: bool = False):
        super().__init__()
        self.as_linear = as_linear
        self.conv = nn.Conv1d(3, 4, kernel_size=3, padding=1)
        self.lin = nn.Linear(9, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, 3, L]
        if self.as_linear:
            patches = F.pad(x, (1, 1)).unfold(2, 3, 1).permute(0, 2, 1, 3).flatten(2)
            h = self.lin(patches)  # [N, L, 4]
        else:
            h = self.conv(x).transpose(1, 2)  # [N, L, 4]
        return self.head(torch.relu(h).amax(1))


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


class EmbedNet(nn.Module):
    def __init__(self, vocab: int = 7, d: int = 3, one_hot: bool = False):
        super().__init__()
        self.one_hot, self.vocab = one_hot, vocab
        self.emb = nn.Embedding(vocab, d)
        self.lin = nn.Linear(vocab, d, bias=False)
        self.head = nn.Linear(d, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: [N, S]
        if self.one_hot:
            h = self.lin(F.one_hot(ids, self.vocab).double())
        else:
            h = self.emb(ids)
        return self.head(torch.tanh(h).mean(1))


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
    batch = _shared_batch(n=1, s=4, t=2)
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


def test_batch_shared_layer_input_is_refused_with_its_name() -> None:
    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.pos(torch.arange(x.shape[1]).unsqueeze(0))  # [1, S, 3]
            return self.head((x + p).mean(1))

    x = torch.randn(4, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="'pos'"):
        estimate_kfac(Broadcast().double(), [(x, torch.tensor([0, 1, 0, 1]))])


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
