"""KFC on a stock Hugging Face classifier: full fine-tuning vs LoRA, state size and cost.

For ``BertForSequenceClassification`` (random weights, built in code) trained in full and
with LoRA adapters (peft, rank r on query and value), measures:

- trained parameters' bytes and the K-FAC consolidation state's bytes (anchor + factors,
  LayerNorm diagonals; symmetric factors stored as one triangle, as on disk), with
  whole factors and with the large factors kept at a rank (K10; ``factor_rank``, LoRA's
  default is the adapter's rank);
- ``kfacel.hf.consolidate`` time over N examples, as a ratio to one training step;
- one training step (forward, backward, AdamW without weight decay, the Trainer's
  default) with and without the KFC penalty's closed-form gradient
  (``penalty.add_grad_``) and the penalty's share of the step; and whole
  ``Trainer.train`` steps against ``KFCTrainer.train`` steps (collation, scheduler and
  logging included);
- what the low-rank factors change: the predicted rise ½ΔᵀFΔ after a few steps on
  other data, low-rank against whole factors (relative difference).

Times are the minimum over ``--repeats`` runs; nothing is asserted. Writes JSON with the
environment.

    python benchmarks/bench_hf_lora.py --small          # a minute on 2 cores
    python benchmarks/bench_hf_lora.py --out bench_hf_lora.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import peft
import torch
import transformers

from _timing import measure
from kfacel.hf import KFCTrainer, consolidate
from kfacel.penalties import build_penalty
from kfacel.penalties.make import predicted_rise


def _config(small: bool) -> transformers.BertConfig:
    hidden = 128 if small else 384
    return transformers.BertConfig(
        vocab_size=5000,
        hidden_size=hidden,
        num_hidden_layers=2 if small else 3,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        num_labels=5,
    )


def _rows(n: int, length: int, seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 5000, (n, length), generator=g)
    return [
        {
            "input_ids": r,
            "attention_mask": torch.ones(length, dtype=torch.long),
            "labels": int(r[0]) % 5,
        }
        for r in ids
    ]


def _collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.stack([r["input_ids"] for r in rows]),
        "attention_mask": torch.stack([r["attention_mask"] for r in rows]),
        "labels": torch.tensor([r["labels"] for r in rows]),
    }


def _trainer_step(
    model: torch.nn.Module, rows: list, states: list, steps: int
) -> float:
    """Seconds per optimizer step of ``Trainer.train`` (``KFCTrainer`` with states)."""
    args = transformers.TrainingArguments(
        output_dir="runs/bench_hf_lora_trainer",
        per_device_train_batch_size=16,
        max_steps=steps,
        learning_rate=1e-3,  # moves far enough for the predicted rise to compare
        logging_steps=steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    extra = {"states": states, "lam": 1.0} if states else {}
    cls = KFCTrainer if states else transformers.Trainer
    trainer = cls(
        model=model, args=args, train_dataset=rows, data_collator=_collate, **extra
    )
    t = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - t) / steps


def _measure(
    model: torch.nn.Module, rows: list, batch: dict, repeats: int, rank: Any
) -> dict:
    trained = [p for p in model.parameters() if p.requires_grad]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(trained, lr=1e-5, weight_decay=0.0)
    t0 = time.perf_counter()
    state = consolidate(
        model, rows, data_collator=_collate, task="A", batch_size=16, factor_rank=rank
    )
    consolidate_s = time.perf_counter() - t0
    whole = consolidate(
        model, rows, data_collator=_collate, task="A", batch_size=16, factor_rank=None
    )
    penalty = build_penalty("kfac", [state], [1.0])

    def step(with_penalty: bool) -> None:
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        if with_penalty:
            penalty.add_grad_(model)
        opt.step()

    plain = measure(lambda: step(False), repeats)[0]
    kfc = measure(lambda: step(True), repeats)[0]
    add_grad = measure(lambda: penalty.add_grad_(model), repeats)[0]
    other = _rows(len(rows), rows[0]["input_ids"].numel(), seed=1)
    trainer_s, kfc_trainer_s = [], []
    for _ in range(repeats):  # interleaved, so that drift of the machine hits both
        model.load_state_dict(start)
        trainer_s.append(_trainer_step(model, other, [], 16))
        model.load_state_dict(start)
        kfc_trainer_s.append(_trainer_step(model, other, [state], 16))
    trainer_s, kfc_trainer_s = min(trainer_s), min(kfc_trainer_s)
    rise, rise_whole = predicted_rise(model, state), predicted_rise(model, whole)
    model.load_state_dict(start)
    trained_bytes = sum(p.numel() * p.element_size() for p in trained)
    return {
        "factor_rank": state.meta.get("factor_rank"),
        "trained_params": sum(p.numel() for p in trained),
        "trained_bytes": trained_bytes,
        "state_bytes": state.nbytes(),
        "state_over_trained": state.nbytes() / trained_bytes,
        "whole_state_over_trained": whole.nbytes() / trained_bytes,
        "kfac_layers": len(state.curvature),
        "consolidate_s": consolidate_s,
        "step_s": plain,
        "step_with_penalty_s": kfc,
        "penalty_add_grad_s": add_grad,
        "penalty_share_of_step": add_grad / plain,
        "consolidate_over_step": consolidate_s / plain,
        "trainer_step_s": trainer_s,
        "kfc_trainer_step_s": kfc_trainer_s,
        "kfc_trainer_over_trainer": kfc_trainer_s / trainer_s,
        "predicted_rise": rise,
        "predicted_rise_whole": rise_whole,
        "rise_rel_diff": abs(rise - rise_whole) / rise_whole,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--length",
        type=int,
        default=None,
        help="tokens a row (default: 32 with --small, else 64)",
    )
    parser.add_argument(
        "--full-factor-rank",
        type=int,
        default=None,
        help="keep full fine-tuning's large factors at this rank (default: whole)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    n, length = (64, 32) if args.small else (256, 64)
    length = args.length or length
    rows = _rows(n, length)
    batch = _collate(rows[:16])
    results = {}
    torch.manual_seed(0)
    full = transformers.BertForSequenceClassification(_config(args.small))
    results["full"] = _measure(full, rows, batch, args.repeats, args.full_factor_rank)
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(_config(args.small))
    lora_cfg = peft.LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, target_modules=["query", "value"]
    )
    results["lora"] = _measure(
        peft.get_peft_model(base, lora_cfg), rows, batch, args.repeats, "auto"
    )
    for name, r in results.items():
        print(
            f"{name:5s} trained {r['trained_bytes'] / 1e6:7.2f} MB  state "
            f"{r['state_bytes'] / 1e6:7.2f} MB ({r['state_over_trained']:.2f}x)  "
            f"step {r['step_s'] * 1e3:7.1f} ms  +penalty {r['step_with_penalty_s'] * 1e3:7.1f} ms "
            f"(add_grad {100 * r['penalty_share_of_step']:.1f}% of a step)  "
            f"consolidate {r['consolidate_s']:.2f} s ({r['consolidate_over_step']:.1f} steps)\n"
            f"      factor rank {r['factor_rank']}: state {r['state_over_trained']:.2f}x "
            f"(whole factors {r['whole_state_over_trained']:.2f}x), predicted rise "
            f"{r['predicted_rise']:.4g} vs {r['predicted_rise_whole']:.4g} whole "
            f"({100 * r['rise_rel_diff']:.1f}% apart); Trainer step "
            f"{r['trainer_step_s'] * 1e3:.0f} ms, KFCTrainer "
            f"{r['kfc_trainer_step_s'] * 1e3:.0f} ms "
            f"({r['kfc_trainer_over_trainer']:.2f}x)"
        )
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "small": args.small,
        "examples": n,
        "length": length,
        "rank": args.rank,
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"env": env, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
