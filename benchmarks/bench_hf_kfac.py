"""K-FAC on a stock 3-layer BERT: against a training step and against curvlinops.

A ``transformers.BertForSequenceClassification`` shaped like the transformer ranker's
encoder (MiniLM: hidden 384, 12 heads, intermediate 1536; 3 layers, random weights, a
vocabulary of 30,522) on padded batches of 16 sequences of 16–64 tokens. Measures, as
minima over ``--repeats`` runs in one process:

- one training step: forward, backward, AdamW (weight decay 0, the Trainer's default);
- ``kfacel.estimate_kfac`` per batch, every trainable layer (Linear and Embedding
  factors, LayerNorm diagonals: ``kfacel.hf.consolidate``'s default), as a ratio to
  the step (the target: ≤ 1.3×);
- on the layers both libraries cover (the 19 Linear layers; embeddings and LayerNorms
  frozen): ``estimate_kfac`` against curvlinops' ``KFACLinearOperator``
  (``compute_kronecker_factors``, empirical Fisher, expand) on the same batches
  (target: kfacel ≥ 1.2× faster). kfacel reads the attention mask and leaves padded
  positions out of A (K5); curvlinops has no masks and counts them, so it does the
  same products over the padded length.

Nothing is asserted; ``--out`` writes JSON with the environment.

    python benchmarks/bench_hf_kfac.py                   # about a minute on 2 cores
    python benchmarks/bench_hf_kfac.py --min-length 64   # no padding
"""

from __future__ import annotations

import argparse
import functools
import json
import platform

import curvlinops
import torch
import transformers
from torch import nn

from _timing import measure
from kfacel import estimate_kfac


def _model() -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=384,
        num_hidden_layers=3,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def _batches(
    n: int, size: int, min_length: int, seed: int = 0
) -> list[tuple[dict, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(min_length, 65, (size,), generator=g)
        width = int(lengths.max())
        ids = torch.randint(1000, 30000, (size, width), generator=g)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        labels = torch.randint(0, 5, (size,), generator=g)
        out.append(({"input_ids": ids * mask, "attention_mask": mask}, labels))
    return out


class _Stacked(nn.Module):
    """``model(x)`` for curvlinops: ``x = stack([input_ids, attention_mask])``."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def _step_time(model: nn.Module, batches: list, repeats: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> None:
        for inputs, labels in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(**inputs).logits, labels).backward()
            opt.step()

    return measure(run, repeats)[0] / len(batches)


def _curvlinops_time(model: nn.Module, batches: list, repeats: int) -> float:
    wrapped = _Stacked(model)
    params = [p for p in model.parameters() if p.requires_grad]
    data = [
        (torch.stack([b["input_ids"], b["attention_mask"]], 1), y) for b, y in batches
    ]

    def run() -> None:
        op = curvlinops.KFACLinearOperator(
            wrapped,
            nn.CrossEntropyLoss(reduction="mean"),
            params,
            data,
            fisher_type="empirical",
            kfac_approx="expand",
            num_data=sum(int(y.shape[0]) for _, y in data),
            check_deterministic=False,
            separate_weight_and_bias=False,
        )
        op.compute_kronecker_factors()

    return measure(run, repeats)[0] / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--min-length",
        type=int,
        default=16,
        help="sequences have min..64 tokens (64: no padding, nothing for masks to save)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    batches = _batches(args.batches, args.batch_size, args.min_length)
    model = _model()
    step = _step_time(model, batches, args.repeats)
    n = len(batches)
    every_layer = functools.partial(estimate_kfac, model, batches, uncovered="diagonal")
    ours_all = measure(every_layer, args.repeats)[0] / n
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[0] in linear)
    ours_linear = measure(lambda: estimate_kfac(model, batches), args.repeats)[0] / n
    peer_linear = _curvlinops_time(model, batches, args.repeats)
    tokens = sum(int(b["attention_mask"].sum()) for b, _ in batches)
    padded = sum(b["attention_mask"].numel() for b, _ in batches)
    results = {
        "step_s": step,
        "kfac_all_layers_s": ours_all,
        "kfac_all_over_step": ours_all / step,
        "linear_layers": len(linear),
        "kfac_linear_s": ours_linear,
        "curvlinops_linear_s": peer_linear,
        "curvlinops_over_kfacel": peer_linear / ours_linear,
        "real_tokens_share": tokens / padded,
    }
    print(
        f"step {step * 1e3:.0f} ms; kfacel K-FAC, every layer: {ours_all * 1e3:.0f} ms "
        f"a batch ({ours_all / step:.2f}x a step)\n"
        f"{len(linear)} Linear layers: kfacel {ours_linear * 1e3:.0f} ms, curvlinops "
        f"{peer_linear * 1e3:.0f} ms a batch (kfacel {peer_linear / ours_linear:.2f}x "
        f"faster; {100 * tokens / padded:.0f}% of the positions are real tokens)"
    )
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "batches": args.batches,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "min_length": args.min_length,
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"env": env, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
