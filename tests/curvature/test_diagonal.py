"""Diagonal Fisher against diag(F) of the brute-force per-example Fisher (K7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel.curvature import estimate_diagonal
from kfacel.positions import valid_positions
from tests.oracles import TOL64, fisher_diagonal, per_example_grads


class TinyRanker(nn.Module):
    """Every layer kind: Embedding, Conv1d, LayerNorm, and a Linear called twice."""

    def __init__(self, vocab: int = 9, d: int = 4, c: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(d)
        self.enc = nn.Linear(d, d)
        self.head = nn.Linear(2 * d, c)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["ids"], batch["mask"]
        m = mask[..., None].to(torch.float64)
        with valid_positions(mask):
            h = self.emb(ids) * m  # [N, S, d], padding zeroed before the convolution
            h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # [N, S, d]
            h = self.norm(torch.tanh(h))
            a = torch.tanh(self.enc(h))  # first call
            b = torch.tanh(self.enc(a))  # second call of the same layer
        b = b.masked_fill(~mask[..., None], float("-inf"))
        pooled = torch.cat([(a * m).sum(1), b.amax(1)], -1)
        return self.head(pooled)


def _select(batch: dict, n: int) -> dict:
    return {k: v[n : n + 1] for k, v in batch.items()}


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_diagonal_equals_brute_force(kind: str) -> None:
    torch.manual_seed(0)
    model = TinyRanker().double()
    ids = torch.randint(0, 9, (5, 6))
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 5:] = False
    batch = {"ids": ids, "mask": mask}
    y = torch.tensor([0, 1, 2, 1, 0])
    diag = estimate_diagonal(model, [(batch, y)], kind=kind)
    ref = fisher_diagonal(per_example_grads(model, batch, y, kind=kind, select=_select))
    assert set(diag) == set(ref)
    for k in ref:
        torch.testing.assert_close(diag[k], ref[k], **TOL64, msg=k)


def test_single_use_fast_path_equals_brute_force() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    diag = estimate_diagonal(model, [(x[:3], y[:3]), (x[3:], y[3:])])
    ref = fisher_diagonal(per_example_grads(model, x, y, kind="empirical"))
    for k in ref:
        torch.testing.assert_close(diag[k], ref[k], **TOL64, msg=k)


def test_unsupported_module_is_named() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.GRUCell(3, 3)).double()
    with pytest.raises(ValueError, match="1 "):
        estimate_diagonal(
            model, [(torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1]))]
        )
