"""K-FAC-expand (K5) against K-FAC-reduce (K8) and the exact Fisher, per layer, on small rankers.

For each covered layer with a dense input factor, prints the Frobenius norms of the
exact Fisher block ``F`` (per-example gradients by a loop, eq. K3) and of ``G ⊗ A`` for
expand and reduce, and the relative error ``‖G ⊗ A − F‖_F / ‖F‖_F``. Two models:

- ``toy``: the paper's Figure-2 scorer (``kfacel.experiments.fisher_figure``): the C
  candidates are the weight-sharing uses of both Linear layers;
- ``cnn``: the ``kfacel train`` CNN ranker, small (hidden 16, embedding width 8), trained
  one epoch on the demo task mm-demo: positions, the mention and candidate encoders and
  the C candidates are the uses. Embeddings are K5–K6 under both and are left out.

Fisher kinds ``empirical`` and ``exact``; float64; N queries. Nothing is asserted.
What to expect where the candidates are the uses: the softmax gradient sums to zero
over candidates (``Σ_c ∂ℓ/∂s_c = 0``), so reduce's ``ĝ_n`` vanishes for the scorer's
output layer (and nearly for its hidden layer), while expand adds the candidates'
squared gradients without that cancellation.

    python benchmarks/kfac_reduce_vs_expand.py [--n 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kfacel.curvature import KFACApprox, KFACFisher, LayerKind, estimate_kfac

MAX_BLOCK = 4000
"""Largest dense Fisher block (parameters of one layer) the script forms."""


def _double(batch: Any) -> Any:
    """A Batch with its floating tensors in float64."""
    moved = {
        f.name: getattr(batch, f.name).double()
        for f in fields(batch)
        if torch.is_tensor(getattr(batch, f.name))
        and getattr(batch, f.name).is_floating_point()
    }
    return replace(batch, **moved)


def toy_setup(n: int) -> tuple[nn.Module, list[tuple[Any, Tensor]], list[Any]]:
    """The Figure-2 scorer, its batches and per-example inputs."""
    from kfacel.experiments.fisher_figure import toy_data

    model, x, y = toy_data(n=n, seed=0)
    singles = [(x[i : i + 1], y[i : i + 1]) for i in range(n)]
    return model, [(x, y)], singles


def cnn_setup(n: int) -> tuple[nn.Module, list[tuple[Any, Tensor]], list[Any]]:
    """The CNN ranker trained one epoch on mm-demo, its batches and single queries."""
    from kfacel.demo import demo_tasks
    from kfacel.linking.linker import new_linker
    from kfacel.training.fit import fit_task
    from kfacel.training.trainer import TrainSettings

    task = demo_tasks()[0]
    linker = new_linker("cnn", task.train, hidden=16, embed_dim=8, seed=0)
    fit_task(linker, task, TrainSettings(epochs=1, lr=3e-3, batch_size=32, seed=0))
    model = linker.model.double().eval()
    queries = task.train[:n]
    batches = [(_double(b), b.labels) for b in linker.batches(queries, 32)]
    singles = [(_double(b), b.labels) for b in linker.batches(queries, 1)]
    return model, batches, singles


def exact_blocks(
    model: nn.Module, singles: list[Any], fisher: KFACFisher, kind: str
) -> dict[str, Tensor]:
    """Exact Fisher block per layer of ``fisher``, ``1/N Σ_n E_y v vᵀ`` (K3)."""
    params = dict(model.named_parameters())
    names = [
        k
        for k, f in fisher.items()
        if f.kind is not LayerKind.EMBEDDING and f.shape[0] * f.shape[1] <= MAX_BLOCK
    ]
    wanted = [p for k in names for p in fisher[k].param_names()]
    rows: dict[str, list[Tensor]] = {k: [] for k in names}
    for x, y in singles:
        logits = model(x)  # [1, C]
        probs = F.softmax(logits.detach(), -1)[0]  # [C]
        targets = [(1.0, int(y[0]))] if kind == "empirical" else list(enumerate(probs))
        for t, (a, b) in enumerate(targets):
            w, c = (a, b) if kind == "empirical" else (float(b), a)
            if w <= 0:
                continue
            loss = F.cross_entropy(logits, torch.tensor([c]), reduction="sum")
            grads = torch.autograd.grad(
                loss,
                [params[p] for p in wanted],
                retain_graph=t < len(targets) - 1,
                allow_unused=True,
            )
            by_name = {
                p: g if g is not None else torch.zeros_like(params[p])
                for p, g in zip(wanted, grads, strict=True)
            }
            for k in names:
                v = fisher[k].folded(by_name).flatten()  # vec(∇W~), row-major (K2)
                rows[k].append(w**0.5 * v)
    n = len(singles)
    return {k: torch.stack(v).T @ torch.stack(v) / n for k, v in rows.items()}


def measure(name: str, n: int) -> list[dict[str, Any]]:
    """One record per layer and Fisher kind."""
    torch.manual_seed(0)
    model, batches, singles = (toy_setup if name == "toy" else cnn_setup)(n)
    out = []
    for kind in ("empirical", "exact"):
        est = {
            approx: estimate_kfac(model, batches, kind=kind, approx=approx)
            for approx in KFACApprox
        }
        exact = exact_blocks(model, singles, est[KFACApprox.EXPAND], kind)
        for layer, block in exact.items():
            rec: dict[str, Any] = {"model": name, "kind": kind, "layer": layer}
            rec["params"] = block.shape[0]
            rec["norm_F"] = float(block.norm())
            for approx, fisher in est.items():
                dense = fisher[layer].to_dense()
                rec[f"norm_{approx}"] = float(dense.norm())
                rec[f"err_{approx}"] = float((dense - block).norm() / block.norm())
            out.append(rec)
    return out


def main() -> None:
    """Measure both models and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="queries")
    parser.add_argument("--json", help="also write the records here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    records = [r for m in ("toy", "cnn") for r in measure(m, args.n)]
    head = (
        f"{'model':5} {'kind':9} {'layer':22} {'P':>5} {'‖F‖':>9} "
        f"{'‖expand‖':>9} {'‖reduce‖':>9} {'err exp':>8} {'err red':>8}"
    )
    print(head)
    for r in records:
        print(
            f"{r['model']:5} {r['kind']:9} {r['layer']:22} {r['params']:5d} "
            f"{r['norm_F']:9.3e} {r['norm_expand']:9.3e} {r['norm_reduce']:9.3e} "
            f"{r['err_expand']:8.3f} {r['err_reduce']:8.3f}"
        )
    print(f"N = {args.n} queries, {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
