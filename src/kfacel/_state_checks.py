"""Validation of consolidation states read from disk: every problem named by file and tensor.

``load_state`` refuses, naming the state file and the tensor: a tensor that is not
floating point (curvature: float32 or float64) or holds NaN or ±inf; a Kronecker factor
that is not positive semi-definite beyond rounding (an eigenvalue below
``-tol · max|eig|``, ``tol = max(1e-6, n · eps)``); a low-rank factor (K10) with a
negative value or columns of ``U`` that are not orthonormal; a diagonal curvature or
Embedding input factor with a negative entry. A factor stored once for several layers
(``shared_factors``) is checked once and named by its key on disk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from kfacel.curvature.factors import DiagonalFisher, KFACFisher, LowRankFactor

PSD_RTOL = 1e-6
"""Least relative tolerance of the PSD check (raised to ``n · eps`` of the dtype)."""


def check_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Refuse a tensor that is not floating point or not finite, naming it."""
    for name, t in tensors.items():
        curvature = not name.startswith("anchor/")
        allowed = (torch.float32, torch.float64) if curvature else None
        if not t.is_floating_point() or (allowed and t.dtype not in allowed):
            raise ValueError(f"{path}: tensor {name!r} has the wrong dtype {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or infinite values")


def check_curvature(
    curvature: KFACFisher | DiagonalFisher | None,
    shared: Mapping[str, str],
    path: Path,
) -> None:
    """Refuse negative curvature: a factor not PSD, a diagonal with a negative entry.

    ``shared`` maps a factor's key to the key of the equal factor stored in its place.
    """
    diagonal: Mapping[str, Tensor] = {}
    if isinstance(curvature, KFACFisher):
        checked: set[str] = set()
        for name, f in curvature.items():
            for which, m in (("G", f.G), ("A", f.A)):
                key = f"kfac/{name}/{which}"
                key = shared.get(key, key)
                if key in checked:
                    continue
                checked.add(key)
                if isinstance(m, LowRankFactor):
                    _check_low_rank(m, f"{path}: tensor '{key}")
                elif m.ndim == 1:
                    _check_nonnegative(m, f"{path}: tensor '{key}'")
                else:
                    _check_psd(m, f"{path}: tensor '{key}'")
        diagonal = curvature.diagonal
    elif isinstance(curvature, DiagonalFisher):
        diagonal = dict(curvature.items())
    for name, v in diagonal.items():
        _check_nonnegative(v, f"{path}: tensor 'diag/{name}'")


def _check_nonnegative(v: Tensor, where: str) -> None:
    if v.numel() and float(v.min()) < 0:
        raise ValueError(
            f"{where} has a negative entry ({float(v.min()):.3g}): "
            "a Fisher diagonal is never negative"
        )


def _check_low_rank(m: LowRankFactor, where: str) -> None:
    """Refuse a low-rank factor (K10) that is not PSD.

    That is a negative ``s`` or ``sigma``, or ``U``'s columns not orthonormal beyond
    float32 rounding. ``where`` ends before the closing quote of the factor's key.
    """
    _check_nonnegative(m.s, f"{where}.s'")
    _check_nonnegative(m.sigma.reshape(1), f"{where}.sigma'")
    gram = m.U.T.double() @ m.U.double()
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    err = float((gram - eye).abs().max()) if gram.numel() else 0.0
    if err > 1e-4:
        raise ValueError(
            f"{where}.U' has columns that are not orthonormal "
            f"(|UᵀU − I| up to {err:.3g}): not a low-rank factor"
        )


def _check_psd(m: Tensor, where: str) -> None:
    """Refuse a symmetric ``m`` whose smallest eigenvalue is below ``-tol·max|eig|``.

    A Cholesky factorization of ``m + tol·max|diag|·I`` (max|diag| ≤ max|eig|) passes
    for every matrix that passes the test; only when it fails are the eigenvalues
    computed, to decide and to report.
    """
    n = m.shape[0]
    if n == 0:
        return
    tol = max(PSD_RTOL, n * torch.finfo(m.dtype).eps)
    m64 = m.double()
    shift = tol * float(m64.diagonal().abs().max())
    eye = torch.eye(n, dtype=torch.float64, device=m.device)
    if int(torch.linalg.cholesky_ex(m64 + shift * eye).info) == 0:
        return
    eig = torch.linalg.eigvalsh(m64)
    low, top = float(eig[0]), float(eig.abs().max())
    if low < -tol * top:
        raise ValueError(
            f"{where} is not positive semi-definite (smallest eigenvalue {low:.3g}, "
            f"largest magnitude {top:.3g})"
        )


def check_anchor(
    anchor: Mapping[str, Tensor], params: Mapping[str, Tensor], path: Path
) -> None:
    """Refuse an anchor tensor whose penalty overflows at the model's own weights.

    A finite value can still be out of any trained weight's range (a flipped exponent
    bit turns 0.01 into 1e36): ``½‖θ − θ*‖²`` in float32, the arithmetic of training,
    is then infinite at the weights training starts from, and so is the penalty (P1).
    ``params`` are the model's parameters by name; names it lacks are skipped.
    """
    for name, a in anchor.items():
        p = params.get(name)
        if p is None:
            continue
        d = p.detach().to(a.device, torch.float32) - a.to(torch.float32)
        half = 0.5 * float(d.square().sum())
        if not math.isfinite(half):
            top = float(a.abs().max())
            raise ValueError(
                f"{path}: tensor 'anchor/{name}' is damaged: it holds a value out of "
                f"any weight's range (|θ*| up to {top:.3g}), so the penalty is {half} "
                "at the model's weights; restore the file or consolidate the task again"
            )
