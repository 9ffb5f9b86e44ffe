"""Gram sums kept on one triangle (`kfacel.curvature._gram`) against full products."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kfacel
from kfacel.curvature import _gram


def test_upper_gram_sums_mirror_to_the_full_products() -> None:
    torch.manual_seed(0)
    d = _gram.PANEL + 45  # two panels, the second narrower
    x, y = (
        torch.randn(7, d, dtype=torch.float64),
        torch.randn(5, d, dtype=torch.float64),
    )
    total = _gram.mirror_upper_(_gram.add_upper_gram_(_gram.upper_gram(x), y))
    torch.testing.assert_close(total, x.T @ x + y.T @ y, rtol=1e-12, atol=1e-12)
    assert torch.equal(total, total.T)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_kfac_factors_do_not_depend_on_the_panel_width(
    approx: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    batches = [
        (torch.randn(4, 2, 6, dtype=torch.float64), torch.randint(0, 3, (4, 2)))
        for _ in range(3)
    ]
    whole = kfacel.estimate_kfac(model, batches, approx=approx)
    monkeypatch.setattr(
        _gram, "PANEL", 2
    )  # panels of 2 of the 7, 6, 5 and 3 coordinates
    paneled = kfacel.estimate_kfac(model, batches, approx=approx)
    for name, f in whole.items():
        torch.testing.assert_close(paneled[name].A, f.A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(paneled[name].G, f.G, rtol=1e-12, atol=1e-14)
