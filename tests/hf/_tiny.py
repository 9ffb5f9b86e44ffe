"""Tiny random Hugging Face models, token datasets and trainer settings (kfacel.hf tests)."""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 40


def bert_config(num_labels: int = 3, **overrides: Any) -> Any:
    """A tiny random BERT: 2 layers, hidden 32, no dropout (built in code, offline)."""
    from transformers import BertConfig

    config = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "num_labels": num_labels,
    }
    return BertConfig(**(config | overrides))


def sequence_rows(n: int, *, seed: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rows ``{input_ids, attention_mask, labels}``: the label is the first token's class."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(offset + 1, offset + 20, (length,), generator=g)
        rows.append(
            {
                "input_ids": ids.tolist(),
                "attention_mask": [1] * length,
                "labels": int(ids[0]) % 3,
            }
        )
    return rows


def token_rows(n: int, *, seed: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rows with one label per token (its id mod 3), -100 at the first token."""
    rows = sequence_rows(n, seed=seed, offset=offset)
    for r in rows:
        r["labels"] = [-100] + [t % 3 for t in r["input_ids"][1:]]
    return rows


def pad_collator(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` with 0, ``attention_mask`` with 0, token labels with -100."""
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, list[list[int]] | list[int]] = {
        "input_ids": [],
        "attention_mask": [],
    }
    labels: list[Any] = []
    for r in rows:
        pad = width - len(r["input_ids"])
        out["input_ids"].append(r["input_ids"] + [0] * pad)  # type: ignore[union-attr]
        out["attention_mask"].append(r["attention_mask"] + [0] * pad)  # type: ignore[union-attr]
        lab = r["labels"]
        labels.append(lab + [-100] * pad if isinstance(lab, list) else lab)
    batch = {k: torch.tensor(v) for k, v in out.items()}
    batch["labels"] = torch.tensor(labels)
    return batch


LR = 0.5
"""The learning rate of ``training_args``: one SGD step moves the weights visibly."""


def training_args(
    out_dir: Any, batch: int, accumulation: int, steps: int = 1, cls: Any = None
) -> Any:
    """``TrainingArguments`` (or ``cls``) of a deterministic CPU run: SGD at ``LR``."""
    import transformers

    return (cls or transformers.TrainingArguments)(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=LR,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )


def classifier(seed: int = 0) -> Any:
    """A tiny random ``BertForSequenceClassification`` (``bert_config``)."""
    import transformers

    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(bert_config())


def perturbed_state(rows: Any) -> tuple[Any, Any]:
    """A model, and a K-FAC state of a copy of it taken before a perturbation."""
    from kfacel import hf

    model = classifier()
    state = hf.consolidate(
        model, rows, data_collator=pad_collator, task="A", batch_size=4
    )
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, state
