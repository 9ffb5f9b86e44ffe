"""Diagonal Fisher against diag(F) of the brute-force per-example Fisher (K7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfacel.curvature import estimate_diagonal
from tests._synth import CASES, CurvatureCase, TinyRanker, select_rows
from tests.oracles import TOL64, fisher_diagonal, per_example_grads

__all__ = ["TinyRanker"]  # tests/consolidation/test_store.py imports it from here


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_diagonal_equals_brute_force(
    case: CurvatureCase, kind: str, padded: bool
) -> None:
    """Every model of the table × Fisher kind × mask: diag(F) by per-example autograd."""
    model, inputs, y = case.make(padded)
    diag = estimate_diagonal(model, [(inputs, y)], kind=kind)
    examples = per_example_grads(model, inputs, y, kind=kind, select=select_rows)
    ref = fisher_diagonal(examples)
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
