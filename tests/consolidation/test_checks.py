"""The PSD check's tolerance and the projection that makes the writer store what it accepts."""

from __future__ import annotations

import pytest
import torch

from kfacel.consolidation.checks import _check_psd, psd_projected, psd_tolerance


def _below_zero(n: int, depth: float) -> torch.Tensor:
    """``11ᵀ`` (eigenvalues n, 0, …) with one null direction ``depth · n`` below zero.

    Its diagonal (1) is n times smaller than its top eigenvalue, so a negative
    eigenvalue of ``-depth · n`` with ``depth`` near the tolerance fails the quick
    Cholesky test and needs the eigenvalues.
    """
    ones = torch.ones(n, 1)
    u = torch.zeros(n, 1)
    u[0], u[1] = 2**-0.5, -(2**-0.5)  # orthogonal to the ones vector
    return ones @ ones.T - depth * n * (u @ u.T)


def test_the_tolerance_grows_with_the_size_and_the_rounding_unit() -> None:
    small, large = torch.zeros(4, 4), torch.zeros(400, 4)
    assert psd_tolerance(large) == 100 * psd_tolerance(small)
    assert psd_tolerance(small) == 64 * 4 * torch.finfo(torch.float32).eps
    assert psd_tolerance(small.double()) == 1e-6  # the floor


def test_a_factor_a_rounding_below_the_cone_is_clamped_onto_it() -> None:
    depth = 0.5 * psd_tolerance(torch.zeros(8, 8))
    m = _below_zero(8, depth)
    assert float(torch.linalg.eigvalsh(m.double())[0]) < 0
    out = psd_projected(m, "f")
    eig = torch.linalg.eigvalsh(out.double())
    assert float(eig[0]) >= -8 * torch.finfo(torch.float32).eps * float(eig[-1])
    assert out.dtype == m.dtype
    assert torch.equal(out, out.T)
    torch.testing.assert_close(out, m, atol=depth * 8, rtol=0)  # moved by the dip
    _check_psd(out, "f")


def test_a_factor_that_passes_comes_back_as_it_is() -> None:
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    m = x.T @ x
    assert torch.equal(psd_projected(m, "f"), m.triu() + m.triu(1).T)


def test_a_factor_far_below_the_cone_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"layer\.G is not positive semi-definite"):
        psd_projected(_below_zero(8, 1e-2), "layer.G")
