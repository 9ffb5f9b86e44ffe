"""Figure 2: K-FAC blocks shaped per layer, the diagonal equal to diag(full)."""

from __future__ import annotations

import numpy as np

from kfacel.experiments.fisher_figure import fisher_matrices, plot_fisher_comparison


def test_blocks_and_diagonal_against_the_full_fisher(tmp_path) -> None:
    m = fisher_matrices(n=128)
    assert m["blocks"].tolist() == [10 * 11, 1 * 11]  # [W | b] of 10x10 and 10x1
    p = sum(m["blocks"])
    assert m["full"].shape == m["kfac"].shape == m["diagonal"].shape == (p, p)
    np.testing.assert_allclose(m["full"], m["full"].T, rtol=0, atol=1e-15)
    # K-FAC: nothing between the layers' blocks, something in each block
    assert not m["kfac"][:110, 110:].any()
    assert not m["kfac"][110:, :110].any()
    assert np.abs(m["kfac"][:110, :110]).max() > 0
    assert np.abs(m["kfac"][110:, 110:]).max() > 0
    # the diagonal estimator equals diag(F) of the explicit per-example gradients
    np.testing.assert_allclose(
        np.diag(m["diagonal"]), np.diag(m["full"]), rtol=1e-12, atol=1e-15
    )
    assert not (m["diagonal"] - np.diag(np.diag(m["diagonal"]))).any()
    # the full Fisher couples the layers, which K-FAC leaves out
    assert np.abs(m["full"][:110, 110:]).max() > 1e-6
    png = plot_fisher_comparison(tmp_path / "f2.png", n=64)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
