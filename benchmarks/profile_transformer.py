"""Where a training step of the transformer ranker spends its time.

Builds the `kfacel train --model transformer` ranker (first 3 MiniLM layers) on the first
queries of a task, runs a few AdamW steps and times each part of the step with wall
clocks around the model's own calls: the mention encoder (queries in context), the name
encoder (candidate names, each distinct name once), the scorer, the backward pass and
the optimizer. It also reports the padding share of both encoders' inputs, the distinct
names per batch and the attention implementation. It prints what it measured; nothing
is asserted.

    python benchmarks/profile_transformer.py --task tasks/public3-small/medmentions
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from kfacel.linking.evaluate import predict
from kfacel.linking.linker import new_linker
from kfacel.tasks.directory import load_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="tasks/public3-small/medmentions")
    p.add_argument("--queries", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-queries", type=int, default=512, help="dev queries timed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    train = task.train[: args.queries]
    linker = new_linker("transformer", train, seed=0)
    model = linker.model.train()
    batches = linker.batches(train, args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the Trainer
    seconds: dict[str, float] = defaultdict(float)
    for part, attr in (("mention encoder", "_encode_mention"),
                       ("name encoder", "_encode_name")):  # fmt: skip
        setattr(model, attr, timed(getattr(model, attr), seconds, part))
    model.scorer.forward = timed(model.scorer.forward, seconds, "scorer")
    pad_m, pad_n, names, distinct = [], [], [], []
    for step, batch in enumerate(batches):
        if step == 2:  # the first steps warm up allocators and kernels
            seconds.clear()
            start = time.perf_counter()
        with clock(seconds, "forward (all)"):
            logits = model(batch)
            loss = F.cross_entropy(logits, batch.labels)
        with clock(seconds, "backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with clock(seconds, "optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        pad_m.append(1 - batch.mention_mask.float().mean().item())
        pad_n.append(1 - batch.candidate_mask.float().mean().item())
        rows = batch.candidate_ids.reshape(-1, batch.candidate_ids.shape[-1])
        names.append(rows.shape[0])
        distinct.append(torch.unique(rows, dim=0).shape[0])
    total = time.perf_counter() - start
    steps = len(batches) - 2
    attn = getattr(model.encoder.config, "_attn_implementation", "?")
    print(
        f"task {args.task}, {steps} timed steps of {args.batch_size} queries, "
        f"{args.threads} threads, attention {attn!r}"
    )
    print(
        f"step: {1000 * total / steps:.0f} ms ({args.batch_size * steps / total:.1f} "
        "queries/s)"
    )
    for part in ("mention encoder", "name encoder", "scorer", "forward (all)",
                 "backward", "optimizer"):  # fmt: skip
        share = 100 * seconds[part] / total
        print(f"  {part:16s} {1000 * seconds[part] / steps:7.1f} ms  {share:5.1f}%")
    print(
        f"padding: mentions {100 * sum(pad_m) / len(pad_m):.0f}%, names "
        f"{100 * sum(pad_n) / len(pad_n):.0f}% of the input positions"
    )
    print(
        f"names per batch: {sum(names) / len(names):.0f} rows, "
        f"{sum(distinct) / len(distinct):.0f} distinct"
    )
    reference = time_reference(model.encoder, batches[2:])
    fwd_bwd = seconds["forward (all)"] + seconds["backward"]
    print(
        f"reference (the 3 layers forward and backward over the real tokens only, "
        f"rows of equal length together): {1000 * reference / steps:.0f} ms a step; "
        f"our forward+backward {fwd_bwd / reference:.2f}x it, our step "
        f"{total / reference:.2f}x"
    )
    flops = sum(encoder_flops(model.encoder.config, b) for b in batches[2:])
    peak = matmul_rate(model.encoder.config)
    print(
        f"dense work of the real tokens: {flops / steps / 1e9:.1f} GFLOP a step; at "
        f"this machine's matmul rate ({peak / 1e9:.0f} GFLOP/s) {1000 * flops / peak / steps:.0f} "
        f"ms; our forward+backward {fwd_bwd * peak / flops:.2f}x that"
    )
    time_evaluation(model, linker.batches(task.dev[: args.eval_queries], 64))


def encoder_flops(config, batch) -> float:
    """Multiply-adds ×2 of the encoder's forward and backward over the real tokens.

    Per layer and token, the Linear layers (Q, K, V, output: 4·D², intermediate and
    output: 2·D·I) cost 2 FLOPs a weight forward and 4 backward; attention costs
    4·S·D a token forward (scores and mixing over its row's S real tokens), twice that
    backward. Rows: every query context and every distinct candidate name.
    """
    d, inter, layers = (
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
    )
    lengths = [len(r) for r in real_rows(batch)]
    per_token = 6 * (4 * d * d + 2 * d * inter)
    attention = sum(3 * 4 * s * s * d for s in lengths)
    return float(layers * (per_token * sum(lengths) + attention))


def matmul_rate(config, tokens: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of this machine on the encoder's largest matmul shape (intermediate)."""
    x = torch.randn(tokens, config.hidden_size)
    w = torch.randn(config.hidden_size, config.intermediate_size)
    x @ w  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        x @ w
    seconds = (time.perf_counter() - start) / repeats
    return 2 * tokens * config.hidden_size * config.intermediate_size / seconds


def real_rows(batch) -> list[torch.Tensor]:
    """A step's encoder rows cut to their real tokens: every context, each name once."""
    names = batch.candidate_ids.flatten(0, 1)
    names_mask = batch.candidate_mask.flatten(0, 1)
    rows = [r[m] for r, m in zip(batch.mention_ids, batch.mention_mask, strict=True)]
    distinct = {
        tuple(r[m].tolist()): r[m] for r, m in zip(names, names_mask, strict=True)
    }
    return rows + list(distinct.values())


def time_reference(encoder, batches) -> float:
    """Seconds for the physical reference of ``batches``' steps.

    Each step: the query contexts and the distinct candidate names, cut to their real
    tokens, through the encoder forward and backward, rows of equal length in one call
    each (no padding, no mask), with a mean-pooled sum as the loss.
    """
    encoder.train()
    start = time.perf_counter()
    for batch in batches:
        by_length: dict[int, list[torch.Tensor]] = defaultdict(list)
        for r in real_rows(batch):
            by_length[len(r)].append(r)
        loss = sum(
            encoder(input_ids=torch.stack(group)).last_hidden_state.mean(1).sum()
            for group in by_length.values()
        )
        encoder.zero_grad(set_to_none=True)
        loss.backward()
    return time.perf_counter() - start


def timed(fn, seconds: dict[str, float], part: str):
    def wrapper(*args, **kwargs):
        with clock(seconds, part):
            return fn(*args, **kwargs)

    return wrapper


def time_evaluation(model, batches) -> None:
    """Evaluation with each distinct name encoded once per batch, then once per split."""
    model.eval()
    times, logits = {}, {}
    for label, reuse in (("per batch", False), ("per split", True)):
        start = time.perf_counter()
        if reuse:
            logits[label] = torch.cat(predict(model, batches))
        else:
            with torch.no_grad():
                logits[label] = torch.cat([model(b) for b in batches])
        times[label] = time.perf_counter() - start
    n = sum(len(b.labels) for b in batches)
    for label, sec in times.items():
        print(f"evaluation, names encoded once {label}: {n / sec:.1f} queries/s")
    a, b = logits["per batch"], logits["per split"]
    gap = torch.where(torch.isfinite(a), a - b, 0.0).abs().max()
    print(
        f"  ratio {times['per batch'] / times['per split']:.2f}x, largest logit gap {gap:.1e}"
    )


@contextmanager
def clock(seconds: dict[str, float], part: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[part] += time.perf_counter() - start


if __name__ == "__main__":
    main()
