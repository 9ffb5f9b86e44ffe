"""Token outputs [N, S, C] (K9) and batch-shared inputs over N·C rows (K5) by brute force.

K-FAC (expand and reduce) and the diagonal Fisher against per-example, per-term
enumeration in ``tests/oracles.py``; a batch-shared input against its hand expansion.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel.curvature import estimate_diagonal, estimate_kfac
from tests._synth import (
    ROWS_CASES,
    TOKEN_CASES,
    CandidateRows,
    CurvatureCase,
    Tagger,
    select_rows,
    split_batches,
)
from tests.oracles import (
    TOL64,
    fisher_diagonal,
    kfac_factors,
    kfac_reduce_factors,
    per_example_grads,
)

CASES = (*TOKEN_CASES, *ROWS_CASES)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_factors_equal_the_per_term_oracle(
    case: CurvatureCase, kind: str, padded: bool, approx: str
) -> None:
    """(A, G) of eqs. (K5)/(K8) with (K9) terms, over two batches, by enumeration."""
    model, inputs, y = case.make(padded)
    fisher = estimate_kfac(model, split_batches(inputs, y, 2), kind=kind, approx=approx)
    oracle = kfac_factors if approx == "expand" else kfac_reduce_factors
    ref = oracle(model, inputs, y, list(case.layers), kind=kind, select=select_rows)
    for name, (A, G) in ref.items():
        torch.testing.assert_close(fisher[name].A, A, **TOL64, msg=f"{name}.A")
        torch.testing.assert_close(fisher[name].G, G, **TOL64, msg=f"{name}.G")
    assert fisher.num_examples == int(y.shape[0])


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_diagonal_equals_the_per_term_oracle(
    case: CurvatureCase, kind: str, padded: bool
) -> None:
    """diag(F) of eq. (K7) with (K9) terms by per-example autograd."""
    model, inputs, y = case.make(padded)
    diag = estimate_diagonal(model, [(inputs, y)], kind=kind)
    ref = fisher_diagonal(
        per_example_grads(model, inputs, y, kind=kind, select=select_rows)
    )
    assert set(diag) == set(ref)
    for k in ref:
        torch.testing.assert_close(diag[k], ref[k], **TOL64, msg=k)


def test_one_term_per_example_is_k3_unchanged() -> None:
    """Labels [N, 1] on logits [N, 1, C] give the Fisher of [N] labels on [N, C]."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    for kind in ("empirical", "exact"):
        flat = estimate_kfac(model, [(x, y)], kind=kind)
        token = estimate_kfac(model, [(x[:, None], y[:, None])], kind=kind)
        torch.testing.assert_close(token[""].G, flat[""].G, **TOL64)
        torch.testing.assert_close(token[""].A, flat[""].A, **TOL64)


@pytest.mark.slow
def test_sampled_token_labels_keep_ignored_terms_and_are_unbiased() -> None:
    """Sampled (K9): -100 stays ignored; the mean of many draws nears exact's G."""
    model, inputs, y = TOKEN_CASES[0].make(True)
    exact = estimate_kfac(model, [(inputs, y)], kind="exact")
    g = torch.Generator().manual_seed(0)
    draws = [
        estimate_kfac(model, [(inputs, y)], kind="sampled", generator=g)
        for _ in range(200)
    ]
    for name in ("mix", "head"):
        mean = torch.stack([d[name].G for d in draws]).mean(0)
        err = (mean - exact[name].G).abs().max() / exact[name].G.abs().max()
        assert float(err) < 0.15, name


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_a_shared_input_over_n_c_rows_equals_its_expansion(padded: bool) -> None:
    """Position ids [1, S] in an encoder over N·C marked rows stand for every row (K5)."""
    torch.manual_seed(0)
    shared, expanded = (
        CandidateRows(shared=True).double(),
        CandidateRows(False).double(),
    )
    expanded.load_state_dict(shared.state_dict())
    _, batch, y = ROWS_CASES[0].make(padded)
    for approx in ("expand", "reduce"):
        fs = estimate_kfac(shared, [(batch, y)], approx=approx)
        fe = estimate_kfac(expanded, [(batch, y)], approx=approx)
        for name in ("tok", "pos", "enc"):
            torch.testing.assert_close(fs[name].A, fe[name].A, **TOL64, msg=name)
            torch.testing.assert_close(fs[name].G, fe[name].G, **TOL64, msg=name)
    ds, de = (
        estimate_diagonal(shared, [(batch, y)]),
        estimate_diagonal(expanded, [(batch, y)]),
    )
    for name in de:
        torch.testing.assert_close(ds[name], de[name], **TOL64, msg=name)


def test_a_shared_tagger_equals_its_expansion_and_skips_padding() -> None:
    """HF-style [1, S] position ids with an attention_mask: padding is no use (K5)."""
    torch.manual_seed(0)
    shared, expanded = Tagger(shared=True).double(), Tagger(shared=False).double()
    expanded.load_state_dict(shared.state_dict())
    _, batch, y = TOKEN_CASES[0].make(True)
    fs, fe = estimate_kfac(shared, [(batch, y)]), estimate_kfac(expanded, [(batch, y)])
    for name in ("tok", "pos", "mix", "head"):
        torch.testing.assert_close(fs[name].A, fe[name].A, **TOL64, msg=name)
        torch.testing.assert_close(fs[name].G, fe[name].G, **TOL64, msg=name)
    real = torch.zeros(shared.pos.num_embeddings, dtype=torch.float64)
    real[: batch["attention_mask"].shape[1]] = batch["attention_mask"].sum(0).double()
    torch.testing.assert_close(fs["pos"].A, real / real.sum(), **TOL64)


def test_tied_weights_are_refused_by_name() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.decoder = nn.Linear(3, 5)
            self.decoder.weight = self.emb.weight  # an MLM decoder tied to the inputs

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.emb(ids))  # [N, S, V]

    ids = torch.randint(0, 5, (2, 3))
    for estimate in (estimate_kfac, estimate_diagonal):
        with pytest.raises(ValueError, match=r"decoder\.weight = emb\.weight"):
            estimate(Tied(), [(ids, ids)])
