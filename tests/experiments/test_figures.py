"""Figures: PNG files of sensible size; the toy's Fisher matrices against their math."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kfacel.experiments.figures import (
    plot_accuracy_matrix,
    plot_lambda_tradeoff,
    plot_toy_gaussians,
    toy_fishers,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _assert_png(path: Path, written: Path) -> None:
    assert written == path
    assert path.is_file()
    w, h = _png_size(path)
    assert 200 <= w <= 3000
    assert 200 <= h <= 3000
    assert path.stat().st_size > 5000  # more than an empty canvas
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_lambda_tradeoff_png(tmp_path: Path) -> None:
    records = []
    for perm in ("a→b", "b→a"):
        records.append({"permutation": perm, "method": "none", "lam": None,
                        "old_acc": 40.0, "new_acc": 80.0})  # fmt: skip
        for method, base in (("ewc", 45.0), ("kfac", 55.0)):
            for k, lam in enumerate((1e1, 1e3, 1e5, 1e7, 1e9)):
                for seed in (0, 1):
                    records.append({
                        "permutation": perm, "method": method, "lam": lam,
                        "old_acc": base + 6 * k + seed, "new_acc": 80.0 - 3 * k,
                    })  # fmt: skip
    path = tmp_path / "sub" / "tradeoff.png"
    _assert_png(path, plot_lambda_tradeoff(records, path))


def test_lambda_tradeoff_tier3_pairs_and_errors(tmp_path: Path) -> None:
    records = [
        {"method": "kfac", "lam": [1e3, lam], "old_acc": 60.0 + i, "new_acc": 80.0 - i}
        for i, lam in enumerate((1e1, 1e3, 1e5))
    ]
    path = tmp_path / "t3.png"
    _assert_png(path, plot_lambda_tradeoff(records, path))
    with pytest.raises(ValueError, match="at least one"):
        plot_lambda_tradeoff([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="lacks"):
        plot_lambda_tradeoff([{"method": "none"}], tmp_path / "x.png")


def test_accuracy_matrix_png(tmp_path: Path) -> None:
    nan = math.nan
    acc = [[80.0, nan, nan], [70.0, 85.0, nan], [75.0, 60.0, 90.0]]
    path = tmp_path / "acc.png"
    _assert_png(path, plot_accuracy_matrix(acc, ["a", "b", "c"], path))
    with pytest.raises(ValueError, match="does not match"):
        plot_accuracy_matrix(acc, ["a", "b"], path)


def test_toy_gaussians_png(tmp_path: Path) -> None:
    path = tmp_path / "figure1.png"
    _assert_png(path, plot_toy_gaussians(path, n=500))


def test_toy_fishers_kfac_is_exact_up_to_sampling_and_diagonal_has_no_tilt() -> None:
    n, rho = 4000, 0.8
    mats = toy_fishers(n=n, rho=rho, seed=0)
    full, diag, kfac = mats["full"], mats["diagonal"], mats["kfac"]
    assert full.shape == diag.shape == kfac.shape == (2, 2)
    np.testing.assert_allclose(full, full.T)
    assert full[0, 1] / math.sqrt(full[0, 0] * full[1, 1]) > 0.6  # tilted
    assert diag[0, 1] == diag[1, 0] == 0.0
    np.testing.assert_allclose(np.diag(diag), np.diag(full))
    # E[g² x xᵀ] vs E[g²] E[x xᵀ] with g ~ N(0, 1) independent of x: both ≈ cov(x);
    # sampling error of a second moment over n examples is a few / sqrt(n).
    tol = 5 / math.sqrt(n)
    np.testing.assert_allclose(kfac, full, atol=tol)
    np.testing.assert_allclose(full, [[1.0, rho], [rho, 1.0]], atol=2 * tol)
    assert abs(kfac[0, 1] - full[0, 1]) < abs(diag[0, 1] - full[0, 1]) / 5


def test_matplotlib_is_imported_lazily() -> None:
    # Importing the module must not import matplotlib (slow) or pick a backend.
    code = (
        "import sys, kfacel.experiments.figures; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
