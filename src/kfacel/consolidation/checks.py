"""Checks of consolidation states: every problem named by file, tensor or parameter.

:func:`check_state` refuses a state whose names or shapes do not match the model.
``load_state`` refuses, naming the state file and the tensor: a tensor that is not
floating point (curvature: float32 or float64) or holds NaN or ±inf; a Kronecker factor
that is not positive semi-definite beyond rounding (an eigenvalue below
``-tol · max|eig|``, :func:`psd_tolerance`); a low-rank factor (K10) with a
negative value or columns of ``U`` that are not orthonormal; a diagonal curvature or
Embedding input factor with a negative entry. A factor stored once for several layers
(``shared_factors``) is checked once and named by its key on disk.

The writer stores what this check accepts: :func:`psd_projected` clamps a factor that
rounding left a little below the PSD cone (a softmax head's ``G`` is singular by
construction, so a sum in float32 tips its zero eigenvalue either way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.consolidation.state import TaskState
from kfacel.curvature.factors import DiagonalFisher, KFACFisher, LowRankFactor
from kfacel.curvature.layers import fold

PSD_RTOL = 1e-6
"""Least relative tolerance of the PSD check (see :func:`psd_tolerance`)."""
PSD_ULPS = 64
"""Rounding units per row that the PSD check allows (see :func:`psd_tolerance`)."""


def check_state(state: TaskState, model: nn.Module, *, where: str = "state") -> None:
    """Refuse a state whose names or shapes do not match ``model``, naming them."""
    params = dict(model.named_parameters())
    problems = []
    for name, t in state.anchor.items():
        if name not in params:
            problems.append(f"{name} is not a parameter of the model")
        elif t.shape != params[name].shape:
            problems.append(
                f"{name}: state {tuple(t.shape)}, model {tuple(params[name].shape)}"
            )
    if isinstance(state.curvature, KFACFisher):
        for name, f in state.curvature.items():
            if f.weight in params and (f.bias is None or f.bias in params):
                bias = params[f.bias] if f.bias else None
                shape = tuple(fold(f.kind, params[f.weight], bias).shape)
                if shape != f.shape:
                    problems.append(
                        f"{name}: factors for {f.shape}, model layer is {shape}"
                    )
    if problems:
        raise ValueError(
            f"{where}: consolidation state of task {state.task!r} does not match the model: "
            + "; ".join(problems)
        )


def psd_tolerance(m: Tensor) -> float:
    """Relative tolerance of the PSD check of ``m: [n, n]``: ``max(1e-6, 64 · n · eps)``.

    A factor is a sum of K outer products; summed in floating point each entry is off by
    at most ``γ_K · Σ_k |x_ki| |x_kj| ≤ γ_K · sqrt(m_ii m_jj)`` (Higham 2002, *Accuracy
    and Stability of Numerical Algorithms*, eq. 3.5), so by Weyl's inequality every
    eigenvalue moves by at most ``γ_K · tr(m) ≤ γ_K · n · max|eig|`` with
    ``γ_K ≈ K · eps``. Blocked sums keep the effective K small; ``PSD_ULPS = 64`` stands
    for it. An eigenvalue below ``-tolerance · max|eig|`` is not rounding: the factor
    is damaged.
    """
    return max(PSD_RTOL, PSD_ULPS * m.shape[0] * torch.finfo(m.dtype).eps)


def psd_projected(m: Tensor, where: str) -> Tensor:
    """``m`` as the loader reads it (its upper triangle mirrored), onto the PSD cone.

    A matrix that passes the PSD check is returned symmetric and otherwise unchanged;
    one a rounding error below the cone gets its negative eigenvalues clamped at 0
    (``V max(Λ, 0) Vᵀ``, the nearest PSD matrix in the Frobenius norm: Higham 1988,
    *Linear Algebra Appl.* 103), computed in float64 and stored in ``m``'s dtype.

    Raises:
        ValueError: ``m`` is below the cone beyond rounding (named by ``where``).
    """
    sym = m.triu() + m.triu(1).T  # [n, n], exactly symmetric
    if _passes_fast(sym):
        return sym
    _check_psd(sym, where)  # refuses beyond rounding
    w, V = torch.linalg.eigh(sym.double())
    out: Tensor = (V * w.clamp_min(0.0)) @ V.T  # V max(Λ, 0) Vᵀ
    out = out.triu() + out.triu(1).T
    return out.to(m.dtype)


def psd_curvature(
    curvature: KFACFisher | DiagonalFisher | None, where: str
) -> KFACFisher | DiagonalFisher | None:
    """``curvature`` with every whole Kronecker factor passed through :func:`psd_projected`.

    Vectors and low-rank factors (K10) stay as they are; a factor shared by layers is
    projected once and stays shared.

    Raises:
        ValueError: a factor below the PSD cone beyond rounding, named by ``where``
            and its key.
    """
    if not isinstance(curvature, KFACFisher):
        return curvature
    done: dict[int, Any] = {}

    def project(m: Any, key: str) -> Any:
        if isinstance(m, Tensor) and m.ndim == 2 and id(m) not in done:
            done[id(m)] = psd_projected(m, f"{where}: factor '{key}'")
        return done.get(id(m), m)

    factors = {
        name: replace(
            f, A=project(f.A, f"kfac/{name}/A"), G=project(f.G, f"kfac/{name}/G")
        )
        for name, f in curvature.items()
    }
    return replace(curvature, factors=factors)


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


def _passes_fast(m: Tensor) -> bool:
    """Whether a Cholesky factorization of ``m + tol·max|diag|·I`` succeeds.

    max|diag| ≤ max|eig|, so every symmetric ``m`` that passes this passes the PSD
    check; one that fails it needs its eigenvalues to decide.
    """
    n = m.shape[0]
    if n == 0:
        return True
    m64 = m.double()
    shift = psd_tolerance(m) * float(m64.diagonal().abs().max())
    eye = torch.eye(n, dtype=torch.float64, device=m.device)
    return int(torch.linalg.cholesky_ex(m64 + shift * eye).info) == 0


def _check_psd(m: Tensor, where: str) -> None:
    """Refuse a symmetric ``m`` whose smallest eigenvalue is below ``-tol·max|eig|``.

    ``tol`` is :func:`psd_tolerance`; the eigenvalues are computed only when the
    Cholesky test of :func:`_passes_fast` fails, to decide and to report.
    """
    if _passes_fast(m):
        return
    eig = torch.linalg.eigvalsh(m.double())
    low, top = float(eig[0]), float(eig.abs().max())
    if low < -psd_tolerance(m) * top:
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
