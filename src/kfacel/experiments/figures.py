"""PNG figures: the λ trade-off, the accuracy matrix and the paper's Figure 1 toy.

Matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` (the Agg
canvas), never ``pyplot``: no global backend or state is changed and nothing needs a
display. Each writer saves to a temporary sibling file and renames it into place, so an
interrupted write never leaves half a PNG, and returns the path written.

The toy of ``plot_toy_gaussians`` follows McInerney et al. 2021, Figure 1: the Laplace
posterior of a 2-parameter model whose curvature is correlated, against its diagonal
and K-FAC approximations. The model is ``ŷ = w · x`` (a Linear layer with 2 inputs, 1
output, no bias) with unit Gaussian noise, on inputs with correlation ``rho``. Its
Fisher is ``F = E[g² x xᵀ]`` with ``g = ∂ℓ/∂ŷ``; K-FAC factors it as ``G ⊗ A`` with
``A = E[x xᵀ]`` and the scalar ``G = E[g²]``. With labels drawn from the model, ``g``
is independent of ``x``, so K-FAC is exact up to sampling noise while the diagonal
``diag(F)`` loses the tilt (Martens & Grosse 2015, ICML, section 3; Ritter et al.
2018, NeurIPS, eq. 6).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kfacel._io import atomic_write

_NO_LAMBDA_MARKERS = {
    "none": "o",
    "lrc": "s",
    "replay": "*",
    "olora": "^",
    "ilora": "v",
}


def _figure(width: float, height: float) -> Any:
    """A pyplot-free Agg figure."""
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` via a temporary file and a rename."""
    return atomic_write(
        path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight")
    )


def plot_lambda_tradeoff(
    records: Iterable[Mapping[str, Any]], path: str | Path
) -> Path:
    """Old-task against new-task dev accuracy per λ, one line per method.

    Args:
        records: one per run, with keys ``method``, ``lam`` (None for methods without
            a λ: a single marker), ``old_acc``, ``new_acc`` and optionally
            ``permutation`` (one panel each, e.g. ``"medmentions→cadec"``). Records
            that share permutation, method and λ (seeds) are averaged, with their
            standard deviation as error bars.
        path: the PNG file.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``records`` is empty or a record lacks a key.
    """
    groups: dict[str, dict[str, dict[Any, list[tuple[float, float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for i, r in enumerate(records):
        missing = {"method", "lam", "old_acc", "new_acc"} - set(r)
        if missing:
            raise ValueError(f"record {i} lacks {sorted(missing)}")
        perm = str(r.get("permutation", ""))
        lam = None if r["lam"] is None else _lam_key(r["lam"])
        groups[perm][str(r["method"])][lam].append(
            (float(r["new_acc"]), float(r["old_acc"]))
        )
    if not groups:
        raise ValueError("plot_lambda_tradeoff needs at least one record")
    perms = sorted(groups)
    cols = min(3, len(perms))
    rows = math.ceil(len(perms) / cols)
    fig = _figure(4.2 * cols, 3.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, perm in zip(axes, perms, strict=False):
        for method in sorted(groups[perm]):
            _plot_method(ax, method, groups[perm][method])
        ax.set_title(perm or "λ trade-off", fontsize=10)
        ax.set_xlabel("new-task accuracy (%)")
        ax.set_ylabel("old-task accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(perms) :]:
        ax.set_visible(False)
    return _save(fig, path)


def _plot_method(
    ax: Any, method: str, by_lam: dict[Any, list[tuple[float, float]]]
) -> None:
    """One method's points (mean ± std over seeds), joined in λ order."""
    lams = sorted((k for k in by_lam if k is not None), key=_lam_key)
    if None in by_lam:
        pts = np.asarray(by_lam[None])
        ax.errorbar(
            pts[:, 0].mean(),
            pts[:, 1].mean(),
            xerr=pts[:, 0].std(),
            yerr=pts[:, 1].std(),
            fmt=_NO_LAMBDA_MARKERS.get(method, "D"),
            label=method,
            capsize=2,
        )
    if not lams:
        return
    mean = np.asarray([np.mean(by_lam[k], axis=0) for k in lams])  # [L, 2]
    std = np.asarray([np.std(by_lam[k], axis=0) for k in lams])  # [L, 2]
    line = ax.errorbar(
        mean[:, 0],
        mean[:, 1],
        xerr=std[:, 0],
        yerr=std[:, 1],
        marker="o",
        label=method,
        capsize=2,
    )
    color = line.lines[0].get_color()
    for k, (x, y) in zip(lams, mean, strict=True):
        ax.annotate(
            _lam_label(k),
            (x, y),
            fontsize=6,
            color=color,
            xytext=(3, 3),
            textcoords="offset points",
        )


def _lam_key(lam: Any) -> tuple[float, ...]:
    return (
        tuple(float(x) for x in lam) if isinstance(lam, list | tuple) else (float(lam),)
    )


def _lam_label(lam: Any) -> str:
    """``1e+03`` style, one value per prior task."""
    return ",".join(f"{x:.0e}" for x in _lam_key(lam))


def plot_calibration(points: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Predicted against measured rise of the old task's loss, one colour per method.

    Args:
        points: ``{"method", "predicted", "measured"}`` per continual cell (nats).
        path: the PNG file.

    Returns:
        ``path``. Log-log axes where every value is positive (symmetric log else), with
        the line ``predicted = measured``.
    """
    fig = _figure(5.0, 4.2)
    ax = fig.add_subplot()
    by_method: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in points:
        by_method[str(p["method"])].append(
            (float(p["measured"]), float(p["predicted"]))
        )
    for method, xy in sorted(by_method.items()):
        xs, ys = zip(*xy, strict=True)
        ax.scatter(xs, ys, s=18, label=method)
    values = [v for xy in by_method.values() for pair in xy for v in pair]
    lo, hi = min(values), max(values)
    if lo > 0:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_yscale("symlog", linthresh=1e-3)
    ax.plot(
        [lo, hi], [lo, hi], color="grey", linestyle="--", label="predicted = measured"
    )
    ax.set_xlabel("measured rise of the old task's mean test loss (nats)")
    ax.set_ylabel("predicted rise ½ΔᵀFΔ (nats)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_accuracy_matrix(
    matrix: np.ndarray | Sequence[Sequence[float]],
    task_names: Sequence[str],
    path: str | Path,
) -> Path:
    """Heat map of ``acc[after_task, on_task]`` with the values written in the cells.

    Args:
        matrix: ``[T, T]`` accuracies in percent; NaN cells (not evaluated) stay blank.
        task_names: the T task names in training order.
        path: the PNG file.

    Returns:
        ``path``.

    Raises:
        ValueError: if the matrix is not square or does not match ``task_names``.
    """
    acc = np.asarray(matrix, dtype=float)
    t = len(task_names)
    if acc.shape != (t, t):
        raise ValueError(f"matrix {acc.shape} does not match {t} task names")
    fig = _figure(1.4 * t + 2.2, 1.2 * t + 1.2)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(acc), vmin=0, vmax=100, cmap="viridis")
    for i in range(t):
        for j in range(t):
            if np.isfinite(acc[i, j]):
                color = "white" if acc[i, j] < 60 else "black"
                ax.text(j, i, f"{acc[i, j]:.1f}", ha="center", va="center", color=color)
    ax.set_xticks(range(t), labels=list(task_names))
    ax.set_yticks(range(t), labels=[f"after {n}" for n in task_names])
    ax.set_xlabel("evaluated on")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, path)


def toy_fishers(
    *, n: int = 4000, rho: float = 0.8, seed: int = 0
) -> dict[str, np.ndarray]:
    """Full, diagonal and K-FAC Fisher of the 2-parameter toy, by per-example gradients.

    Args:
        n: number of examples.
        rho: correlation of the two inputs.
        seed: seed of the inputs, the true weights and the sampled labels.

    Returns:
        ``{"full", "diagonal", "kfac"}``: ``[2, 2]`` arrays, and ``"mean"``: ``[2]``,
        the weights the Gaussians are centred on.
    """
    import torch  # lazy: only this figure needs it

    gen = torch.Generator().manual_seed(seed)
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    x = (
        torch.randn(n, 2, generator=gen, dtype=torch.float64)
        @ torch.linalg.cholesky(cov).T
    )  # [N, 2]
    w_true = torch.tensor([1.0, -0.5], dtype=torch.float64)
    y = x @ w_true + torch.randn(n, generator=gen, dtype=torch.float64)  # [N]
    w = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)  # [2], the optimum
    y_model = x @ w + torch.randn(
        n, generator=gen, dtype=torch.float64
    )  # labels ~ p(y|x)
    layer = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(w.unsqueeze(0))
    grads, out_grads = [], []
    for xn, yn in zip(x, y_model, strict=True):  # per-example gradients, by a loop
        out = layer(xn.unsqueeze(0)).squeeze()
        loss = 0.5 * (out - yn) ** 2  # Gaussian NLL, unit variance, up to a constant
        (g_w,) = torch.autograd.grad(loss, layer.weight, retain_graph=True)
        (g_out,) = torch.autograd.grad(loss, out)
        grads.append(g_w.reshape(-1))
        out_grads.append(g_out.reshape(1))
    g = torch.stack(grads)  # [N, 2]
    go = torch.stack(out_grads)  # [N, 1]
    full = torch.einsum("ni,nj->ij", g, g) / n  # F = E[∇ℓ ∇ℓᵀ]
    A = torch.einsum("ni,nj->ij", x, x) / n  # E[x xᵀ]
    G = torch.einsum("no,np->op", go, go) / n  # E[g gᵀ], [1, 1]
    return {
        "full": full.numpy(),
        "diagonal": torch.diag(torch.diagonal(full)).numpy(),
        "kfac": torch.kron(G, A).numpy(),  # vec order of a [1, 2] weight: kron(G, A)
        "mean": w.numpy(),
    }


def _ellipse(precision: np.ndarray, centre: np.ndarray, level: float) -> np.ndarray:
    """Points of ``{θ : (θ − centre)ᵀ P (θ − centre) = level}``, shape ``[K, 2]``."""
    evals, evecs = np.linalg.eigh(precision)
    t = np.linspace(0.0, 2.0 * np.pi, 200)
    circle = np.stack([np.cos(t), np.sin(t)])  # [2, K]
    pts: np.ndarray = (evecs @ (circle * np.sqrt(level / evals)[:, None])).T  # [K, 2]
    return np.asarray(pts + centre, dtype=float)


def plot_toy_gaussians(
    path: str | Path, *, n: int = 4000, rho: float = 0.8, seed: int = 0
) -> Path:
    """The paper's Figure 1: a correlated Gaussian, its diagonal and K-FAC versions.

    Draws the 1σ and 2σ contours of the Laplace posterior ``N(w*, (n F)⁻¹)`` of the toy
    (see the module docstring) for the full Fisher, the diagonal and K-FAC.

    Args:
        path: the PNG file.
        n: number of examples of the toy.
        rho: correlation of its two inputs.
        seed: its seed.

    Returns:
        ``path``.
    """
    mats = toy_fishers(n=n, rho=rho, seed=seed)
    centre = mats["mean"]
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    styles = {
        "full": ("true Gaussian (full Fisher)", "black", "-"),
        "diagonal": ("diagonal Fisher (EWC)", "tab:red", "--"),
        "kfac": ("K-FAC (KFC)", "tab:blue", ":"),
    }
    for key, (label, color, ls) in styles.items():
        for level in (1.0, 4.0):
            pts = _ellipse(n * mats[key], centre, level)
            ax.plot(
                pts[:, 0],
                pts[:, 1],
                color=color,
                ls=ls,
                lw=1.8 if key != "kfac" else 2.4,
                label=label if level == 1.0 else None,
            )
    ax.plot(*centre, "k+", ms=10)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"2-parameter toy, input correlation {rho}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return _save(fig, path)
