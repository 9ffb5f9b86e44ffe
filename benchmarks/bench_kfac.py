"""Curvature benchmark: K-FAC and diagonal Fisher vs a training step, curvlinops and ASDL.

Measures, in one run on one machine, for an MLP 512-1024-1024-10 and a 3-layer BERT-size
encoder (hidden 384, 32 tokens, vocabulary 30,522, classifier on the first token):

- time of one training step (forward, cross-entropy, backward, AdamW step) over N examples;
- K-FAC (empirical; expand, and reduce, eq. K8) and diagonal Fisher over the same N
  examples, as ratios to it;
- curvlinops' KFACLinearOperator computing the same Linear factors, its time, peak memory
  and the max relative difference of its factors from ours;
- the same for ASDL's empirical-Fisher K-FAC (``asdl.get_fisher_maker``), compared on the
  weight block of A (ASDL's A has no bias coordinate). A peer that fails on a model is
  recorded as ``fails: <error>`` in place of its time;
- the CNN ranker of `kfacel train` on the demo task mm-demo (K-FAC with its padding masks;
  no peer: curvlinops knows neither Conv1d nor masks, ASDL no masks), and its transformer
  ranker (`--models tranker`: first 3 MiniLM layers, 22M parameters);
- a training step with the KFC penalty of one prior task (closed-form gradient) vs a plain
  step, and the consolidation state's bytes vs the model's parameter bytes.

Peak memory is the peak resident set size above the level before the call, sampled every
2 ms. Times are the minimum over ``--repeats`` runs. Nothing is asserted: it prints a table
and writes JSON with the environment.

    python benchmarks/bench_kfac.py            # full sizes (minutes on 2 cores)
    python benchmarks/bench_kfac.py --small    # small sizes, the README's quick check

The peers: ``pip install curvlinops-for-pytorch`` and
``pip install --no-deps asdfghjkl==0.1a5`` (imported as ``asdl``; ``--no-deps`` so that it
cannot replace the installed torch).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kfacel
from _timing import measure
from kfacel.consolidation import TaskState, save_state


def peak_mb(model: str, what: str, args: argparse.Namespace) -> float | None:
    """Peak RSS (MB) of one ``what`` run above the level after setup, in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--probe",
        what,
        "--models",
        model,
        "--examples",
        str(args.examples),
        "--batch",
        str(args.batch),
    ]
    if args.small:
        cmd.append("--small")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("peak_mb ")]
    return float(lines[-1].split()[1]) if lines else None


def probe(what: str, model_name: str, args: argparse.Namespace) -> None:
    """Run one computation after setup and print its peak RSS increase."""
    model, data = setup(model_name, args.small, args.examples, args.batch)
    if what in ("curvlinops", "asdl"):
        __import__(what)  # its import is not the computation's memory
    fns = {
        "train": trainer(copy.deepcopy(model), data),
        "kfac": lambda: kfacel.estimate_kfac(model, data),
        "diag": lambda: kfacel.estimate_diagonal(model, data),
        "curvlinops": lambda: peer_kfac(model, data),
        "asdl": lambda: peer_asdl(model, data),
    }
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to now
    before = _status_kb("VmRSS")
    fns[what]()
    print(f"peak_mb {(_status_kb('VmHWM') - before) / 1024:.1f}")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class MLP(nn.Module):
    def __init__(self, sizes: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """BERT encoder (random init) with per-example position ids and a classifier."""

    def __init__(self, hidden: int, layers: int, vocab: int, classes: int):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=4 * hidden,
            max_position_embeddings=512,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, s = ids.shape
        pos = torch.arange(s, device=ids.device).expand(n, s)
        out = self.bert(
            input_ids=ids, position_ids=pos, token_type_ids=torch.zeros_like(ids)
        )
        return self.head(out.last_hidden_state[:, 0])


def setup(name: str, small: bool, n: int, batch: int) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    if name == "mlp":
        sizes = [128, 256, 256, 10] if small else [512, 1024, 1024, 10]
        model: nn.Module = MLP(sizes)
        data = [
            (torch.randn(batch, sizes[0]), torch.randint(0, 10, (batch,)))
            for _ in range(n // batch)
        ]
    elif name in ("ranker", "tranker"):
        from kfacel.demo import demo_tasks
        from kfacel.linking.linker import new_linker

        task = demo_tasks()[0]
        if name == "ranker":
            linker = new_linker("cnn", task.train, hidden=64 if small else 256, seed=0)
        else:  # the transformer ranker of `kfacel train` (3 MiniLM layers)
            linker = new_linker("transformer", task.train, layers=3, seed=0)
        model = linker.model
        data = [(b, b.labels) for b in linker.batches(task.train[:n], batch)]
    else:
        hidden, layers, vocab, seq = (64, 2, 2000, 16) if small else (384, 3, 30522, 32)
        model = Encoder(hidden, layers, vocab, 10)
        data = [
            (torch.randint(0, vocab, (batch, seq)), torch.randint(0, 10, (batch,)))
            for _ in range(n // batch)
        ]
    return model, data


def trainer(model: nn.Module, data: list, penalty: Any = None) -> Callable[[], None]:
    """One training step per batch (forward, CE, backward, [penalty], AdamW step).

    AdamW is fused, as kfacel's Trainer runs it (the per-tensor default took a third
    of the transformer ranker's step on one CPU thread, which flattered every ratio).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    return lambda: _steps(model, opt, data, penalty)


def _steps(
    model: nn.Module, opt: torch.optim.Optimizer, data: list, penalty: Any
) -> None:
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if penalty is not None:
            penalty.add_grad_(model)
        opt.step()


def peer_kfac(
    model: nn.Module, data: list
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    import curvlinops

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    modules = dict(model.named_modules())
    op = curvlinops.KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(reduction="mean"),
        [p for n in names for p in modules[n].parameters()],
        data,
        fisher_type="empirical",
        kfac_approx="expand",
        num_data=sum(len(y) for _, y in data),
        num_per_example_loss_terms=1,
        check_deterministic=False,
        separate_weight_and_bias=False,
    )
    op.compute_kronecker_factors()
    return {n: (op._input_covariances[n], op._gradient_covariances[n]) for n in names}


def peer_asdl(
    model: nn.Module, data: list
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """ASDL's empirical-Fisher K-FAC of every Linear, in our scaling; A without the bias.

    ASDL sums the loss over examples, flattens a Linear's [N, S, D] input to N·S rows and
    scales by 1/data_size: A = Σ_{n,s} a aᵀ / N over the weight inputs only (its K-FAC
    treats the bias with G alone), B = Σ_{n,s} g gᵀ / N with g = ∂ℓ_n/∂z_{n,s}. Ours
    ("expand") is A = Σ ā āᵀ / (N·S) with the bias last, G = Σ g gᵀ / N; so we return
    (A / S, B), S being the positions per example a Linear sees (1 for an [N, D] input),
    to compare with our A's leading D×D block.
    """
    import asdl

    modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    positions: dict[str, int] = {}

    def count(name: str) -> Callable[..., None]:
        return lambda _m, inp, _out: positions.__setitem__(
            name, inp[0].numel() // (inp[0].shape[0] * inp[0].shape[-1])
        )

    hooks = [m.register_forward_hook(count(n)) for n, m in modules.items()]
    config = asdl.FisherConfig(
        fisher_type=asdl.FISHER_EMP,
        fisher_shapes=[asdl.SHAPE_KRON],
        data_size=sum(len(y) for _, y in data),
        ignore_modules=[nn.LayerNorm, nn.Embedding],  # K-FAC of the Linear layers only
    )
    maker = asdl.get_fisher_maker(model, config)
    try:
        with warnings.catch_warnings():
            # ASDL registers legacy module backward hooks; it reads only their grad_output
            warnings.simplefilter("ignore", FutureWarning)
            for i, (x, y) in enumerate(data):
                maker.setup_loss_call(
                    F.cross_entropy, maker.setup_model_call(model, x), y
                )
                maker.forward_and_backward(accumulate=i > 0)
        kron = {n: m.fisher.kron for n, m in modules.items()}
    finally:
        for h in hooks:
            h.remove()
        maker.zero_fisher()  # leave no `fisher` attribute on the model
    return {n: (k.A / positions[n], k.B) for n, k in kron.items()}


def max_rel(ours: kfacel.KFACFisher, peer: dict) -> float:
    """Max over layers of max|ours − peer| / max|peer|, on the block of A the peer has."""
    worst = 0.0
    for name, (A, G) in peer.items():
        d = A.shape[0]  # ASDL's A lacks the bias coordinate, our last
        for a, b in ((ours[name].A[:d, :d], A), (ours[name].G, G)):
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model, data = setup(name, args.small, args.examples, args.batch)
    n = sum(len(y) for _, y in data)
    params = sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
    )
    row: dict[str, Any] = {"model": name, "examples": n, "param_MB": params / 2**20}
    t_train, _ = measure(trainer(copy.deepcopy(model), data), args.repeats)
    t_kfac, fisher = measure(lambda: kfacel.estimate_kfac(model, data), args.repeats)
    t_reduce, _ = measure(
        lambda: kfacel.estimate_kfac(model, data, approx="reduce"), args.repeats
    )
    t_diag, _ = measure(lambda: kfacel.estimate_diagonal(model, data), args.repeats)
    row |= {
        "train_s": t_train,
        "kfac_s": t_kfac,
        "diag_s": t_diag,
        "kfac_ratio": t_kfac / t_train,
        "reduce_ratio": t_reduce / t_train,
        "diag_ratio": t_diag / t_train,
    }
    peers = {"curvlinops": peer_kfac, "asdl": peer_asdl}
    if name not in ("ranker", "tranker"):  # peers: Linear only, no padding masks
        for peer, fn in peers.items():
            diff = "max_rel_diff" + ("" if peer == "curvlinops" else f"_{peer}")
            try:
                t_peer, factors = measure(
                    functools.partial(fn, model, data), args.repeats
                )
            except Exception as e:  # a model the peer cannot handle is a result too
                row[f"{peer}_s"] = f"fails: {type(e).__name__}: {e}"
                continue
            row |= {
                f"{peer}_s": t_peer,
                f"speedup_vs_{peer}": t_peer / t_kfac,
                diff: max_rel(fisher, factors),
            }
    if not args.no_memory:
        ours = ("train", "kfac", "diag")
        for what in (*ours, *(() if name in ("ranker", "tranker") else peers)):
            row[f"{what}_MB"] = peak_mb(name, what, args)
    penalty = kfacel.KFACPenalty().add_task(kfacel.snapshot(model), fisher, lam=1.0)
    t_plain, _ = measure(trainer(copy.deepcopy(model), data), args.repeats)
    t_pen, _ = measure(trainer(copy.deepcopy(model), data, penalty), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, TaskState("bench", "kfac", kfacel.snapshot(model), fisher))
        state = sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
    row |= {
        "penalty_step_ratio": t_pen / t_plain,
        "state_MB": state / 2**20,
        "state_ratio": state / params,
    }
    return row


def _cell(value: Any, fmt: str) -> str:
    """A table cell: "-" when absent, a peer's "fails: ..." as it is."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else fmt.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--models", default="mlp,bert,ranker")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/out/bench_kfac.json")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the memory probes"
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.examples = args.examples or (256 if args.small else 1024)
    args.batch = args.batch or (32 if args.small else 64)
    args.repeats = args.repeats or (2 if args.small else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        probe(args.probe, args.models, args)
        return
    rows = [bench(m, args) for m in args.models.split(",")]
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "small": args.small,
        "examples": args.examples,
        "batch": args.batch,
    }
    cols = [
        ("model", "{}"),
        ("examples", "{}"),
        ("train_s", "{:.3f}"),
        ("kfac_s", "{:.3f}"),
        ("kfac_ratio", "{:.2f}"),
        ("reduce_ratio", "{:.2f}"),
        ("diag_s", "{:.3f}"),
        ("diag_ratio", "{:.2f}"),
        ("curvlinops_s", "{:.3f}"),
        ("speedup_vs_curvlinops", "{:.2f}"),
        ("asdl_s", "{:.3f}"),
        ("speedup_vs_asdl", "{:.2f}"),
        ("train_MB", "{:.0f}"),
        ("kfac_MB", "{:.0f}"),
        ("diag_MB", "{:.0f}"),
        ("curvlinops_MB", "{:.0f}"),
        ("asdl_MB", "{:.0f}"),
        ("max_rel_diff", "{:.1e}"),
        ("max_rel_diff_asdl", "{:.1e}"),
        ("penalty_step_ratio", "{:.3f}"),
        ("state_ratio", "{:.2f}"),
    ]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [_cell(r.get(c), fmt) for c, fmt in cols]
        print("| " + " | ".join(cells) + " |")
    print(f"env: {env}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
