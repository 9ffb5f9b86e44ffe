"""K-FAC factors against an independent library: curvlinops' KFACLinearOperator.

Scaling (curvlinops issue #82): with ``CrossEntropyLoss(reduction="mean")``,
``fisher_type="empirical"`` and ``kfac_approx="expand"``, curvlinops' input covariance is
``Σ ā āᵀ / (N·S)`` and its gradient covariance ``Σ g gᵀ / N`` — our (K5) exactly. With
``reduction="sum"`` its G would be N times larger. With ``kfac_approx="reduce"`` it
averages each example's inputs and sums its output gradients over the weight-sharing
dimension, both covariances divided by N: our (K8) when every example uses every
position (curvlinops has no padding masks).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel.curvature import estimate_kfac

curvlinops = pytest.importorskip("curvlinops")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.oracle
REL = 1e-5


def _peer_factors(
    model: nn.Module, data: list, names: list[str], approx: str = "expand"
) -> dict[str, tuple]:
    modules = dict(model.named_modules())
    params = [p for n in names for p in modules[n].parameters()]
    op = curvlinops.KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(reduction="mean"),
        params,
        data,
        fisher_type="empirical",
        kfac_approx=approx,
        num_data=sum(int(y.shape[0]) for _, y in data),
        num_per_example_loss_terms=1,
        check_deterministic=False,
        separate_weight_and_bias=False,
    )
    op.compute_kronecker_factors()
    return {n: (op._input_covariances[n], op._gradient_covariances[n]) for n in names}


def _assert_rel(ours: torch.Tensor, peer: torch.Tensor, what: str) -> None:
    err = float((ours - peer).abs().max() / peer.abs().max())
    assert err < REL, f"{what}: max relative difference {err:.2e}"


def test_mlp_factors_agree_with_curvlinops() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)
    )
    data = [(torch.randn(5, 6), torch.randint(0, 4, (5,))) for _ in range(3)]
    ours = estimate_kfac(model, data)
    peer = _peer_factors(model, data, ["0", "2", "4"])
    for name, (A, G) in peer.items():
        _assert_rel(ours[name].A, A, f"{name}.A")
        _assert_rel(ours[name].G, G, f"{name}.G")


class TinyBert(nn.Module):
    """A 2-layer BERT encoder and a classifier over the first token."""

    def __init__(self) -> None:
        super().__init__()
        cfg = transformers.BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.bert = transformers.BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, s = ids.shape
        pos = torch.arange(s).expand(n, s)  # per-example position ids
        out = self.bert(
            input_ids=ids, position_ids=pos, token_type_ids=torch.zeros_like(ids)
        )
        return self.head(out.last_hidden_state[:, 0])


def test_transformer_factors_agree_with_curvlinops() -> None:
    torch.manual_seed(0)
    model = TinyBert()
    data = [(torch.randint(0, 50, (4, 7)), torch.randint(0, 3, (4,))) for _ in range(2)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    ours = estimate_kfac(model, data)
    peer = _peer_factors(model, data, names)
    assert len(names) == 13  # 2 blocks x 6 Linear + head
    for name, (A, G) in peer.items():
        _assert_rel(ours[name].A, A, f"{name}.A")
        _assert_rel(ours[name].G, G, f"{name}.G")
    assert (
        "bert.embeddings.word_embeddings" in ours
    )  # beyond the peer: Embedding covered


class SharedLinear(nn.Module):
    """A Linear over S positions, a position-wise Linear, mean pooling, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, S, 4]
        h = self.mix(torch.tanh(self.enc(x)))  # [N, S, 6]
        return self.head(torch.tanh(h).mean(1))


def test_reduce_factors_agree_with_curvlinops() -> None:
    """Eq. (K8) against ``kfac_approx="reduce"`` on a Linear model with weight sharing."""
    torch.manual_seed(0)
    model = SharedLinear()
    data = [(torch.randn(5, 7, 4), torch.randint(0, 3, (5,))) for _ in range(3)]
    ours = estimate_kfac(model, data, approx="reduce")
    peer = _peer_factors(model, data, ["enc", "mix", "head"], approx="reduce")
    for name, (A, G) in peer.items():
        _assert_rel(ours[name].A, A, f"{name}.A")
        _assert_rel(ours[name].G, G, f"{name}.G")
