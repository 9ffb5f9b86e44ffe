"""The paper's Figure 2: full Fisher vs K-FAC block-diagonal vs diagonal, as heat maps.

The toy is the top of a candidate scorer with hidden size 10 (McInerney et al. 2021,
section 3, Figure 2): each of ``C`` candidates has a 10-d encoding ``x_c``, scored by
``s_c = w₂ᵀ tanh(W₁ x_c + b₁) + b₂``: a 10×10 and a 10×1 Linear layer, 110 + 11 = 121
parameters. The loss is the cross-entropy of the gold candidate among the ``C``
(``model(x) -> logits [N, C]``, the categorical predictor every kfacel ranker is).

- **Full** Fisher ``F = 1/N Σ_n g_n g_nᵀ`` from explicit per-example gradients (a loop;
  empirical: the gold label, eq. 3 of the paper), in the folded vec order of
  ``curvature/conventions.py``: per layer the rows of ``W~ = [W | b]``, layer by layer.
- **K-FAC**: ``kfacel.estimate_kfac``; each layer's ``G ⊗ A`` (``.to_dense()``) placed
  on the diagonal, zero between layers. It differs from the full Fisher's blocks even on
  the diagonal: the candidates are shared positions, treated as independent (K-FAC's
  assumption, Grosse & Martens 2016).
- **Diagonal**: ``kfacel.estimate_diagonal`` folded the same way; it equals
  ``diag(F)`` exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kfacel.curvature import estimate_diagonal, estimate_kfac

HIDDEN = 10
LAYERS = ("hidden", "out")


class ToyScorer(nn.Module):
    """``[N, C, 10] -> logits [N, C]`` through a 10×10 and a 10×1 Linear layer."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, C]`` of candidate encodings ``x: [N, C, H]``."""
        logits: Tensor = self.out(torch.tanh(self.hidden(x))).squeeze(-1)  # [N, C]
        return logits


def toy_data(
    n: int = 512, candidates: int = 5, seed: int = 0
) -> tuple[ToyScorer, Tensor, Tensor]:
    """A float64 toy scorer, encodings ``[N, C, 10]`` and gold indices ``[N]``.

    The labels come from a teacher of the same shape, so the gradients are those of a
    model partly fit to its task rather than pure noise.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model, teacher = ToyScorer().double(), ToyScorer().double()
    x = torch.randn(n, candidates, HIDDEN, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        probs = torch.softmax(3.0 * teacher(x), dim=-1)  # [N, C]
    y = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # [N]
    return model, x, y


def _folded(grads: dict[str, Tensor]) -> Tensor:
    """``vec([W | b])`` of each layer, concatenated in layer order."""
    parts = [
        torch.cat([grads[f"{m}.weight"], grads[f"{m}.bias"].unsqueeze(1)], 1).flatten()
        for m in LAYERS
    ]
    return torch.cat(parts)


def fisher_matrices(n: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """Full, K-FAC block-diagonal and diagonal Fisher of the toy, ``[P, P]`` each.

    Returns:
        ``{"full", "kfac", "diagonal"}`` as float64 arrays, and ``"blocks"``: the
        ``[2]`` array of each layer's folded size (110, 11).
    """
    model, x, y = toy_data(n, seed=seed)
    params = dict(model.named_parameters())
    rows = []
    for xn, yn in zip(x, y, strict=True):  # per-example gradients, by a loop
        loss = nn.functional.cross_entropy(model(xn.unsqueeze(0)), yn.view(1))
        grads = torch.autograd.grad(loss, list(params.values()))
        rows.append(_folded(dict(zip(params, grads, strict=True))))
    g = torch.stack(rows)  # [N, P]
    full = torch.einsum("ni,nj->ij", g, g) / n  # F = 1/N Σ g gᵀ
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)]
    kfac = estimate_kfac(model, batches, kind="empirical")
    blocks = [kfac[name].to_dense() for name in LAYERS]  # [o(i+1), o(i+1)] each
    diag = estimate_diagonal(model, batches, kind="empirical")
    diag_vec = _folded(dict(diag.items()))
    return {
        "full": full.numpy(),
        "kfac": torch.block_diag(*blocks).numpy(),
        "diagonal": torch.diag(diag_vec).numpy(),
        "blocks": np.array([b.shape[0] for b in blocks]),
    }


def plot_fisher_comparison(path: str | Path, *, n: int = 512, seed: int = 0) -> Path:
    """Figure 2: ``log10 |F|`` of full, K-FAC and diagonal as three heat maps.

    Args:
        path: the PNG file.
        n: examples of the toy.
        seed: its seed.

    Returns:
        ``path``.
    """
    from kfacel.experiments.figures import _figure, _save

    mats = fisher_matrices(n, seed)
    titles = {
        "full": "full Fisher",
        "kfac": "K-FAC (block diagonal)",
        "diagonal": "diagonal (EWC)",
    }
    logs = {k: np.log10(np.abs(mats[k]) + 1e-300) for k in titles}
    top = float(logs["full"].max())
    fig = _figure(13.0, 4.4)
    axes: Any = fig.subplots(1, 3)
    edges = np.cumsum(mats["blocks"])[:-1] - 0.5
    im = None
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        shown = np.ma.masked_where(mats[key] == 0, logs[key])
        im = ax.imshow(
            shown, vmin=top - 6, vmax=top, cmap="magma", interpolation="nearest"
        )
        for e in edges:
            ax.axhline(e, color="tab:cyan", lw=0.6)
            ax.axvline(e, color="tab:cyan", lw=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), label="log10 |F_ij| (blank: 0)", shrink=0.8)
    fig.suptitle(
        f"Fisher of a scorer with hidden size {HIDDEN} (10×10 and 10×1 layers, "
        f"{mats['full'].shape[0]} parameters)",
        fontsize=10,
    )
    return Path(_save(fig, path))
