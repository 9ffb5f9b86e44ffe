"""Disease NER (NCBI Disease), then adverse-event NER (CADEC), without and with KFC.

A MiniLM token classifier (``kfacel.hf.minilm_path()``: the shipped weights, first 3 layers)
is trained with the Hugging Face ``Trainer`` on NCBI Disease, consolidated with
``kfacel.hf.consolidate``, then trained on CADEC from the same weights with a plain
``Trainer`` and with ``kfacel.hf.KFCTrainer``. Both tasks' entity F1 (seqeval, on word
pieces) is printed after each step. Needs the ``hf`` and ``minilm`` extras and the
corpora in ``../shared/data`` (or ``--data``)::

    python examples/ner_kfc.py --small       # a few minutes on 2 CPU cores
    python examples/ner_kfc.py --small --lam 0.1 1 --budget 0.005 0.001   # a sweep
    python examples/ner_kfc.py --heads shared --lam 10

Heads: ``per-task`` (the default) gives each corpus its own BIO head (``O/B-DIS/I-DIS``
and ``O/B-ADR/I-ADR``) on the shared encoder, as a team adding an entity type adds an
output layer: NCBI's head is set aside while CADEC trains its new one, NCBI is consolidated
with its head frozen (the state covers the encoder), and NCBI is scored with its own head
on the encoder after CADEC. ``shared``: one head over both label sets; CADEC then trains
the disease labels only as negatives (every token is O or ADR), which removes them from
any model — competition between classes, not forgetting a penalty can prevent.

Each strength is trained from the same NCBI model and state; the last lines give, per
strength, the share of NCBI's forgetting that KFC removed and what it cost CADEC's F1
against plain fine-tuning. ``--out DIR`` receives ``results.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
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
from kfacel.hf import KFCTrainer, Strength, consolidate, minilm_path
from kfacel.penalties.strength import DEFAULT_BUDGET

SHARED = ["O", "B-DIS", "I-DIS", "B-ADR", "I-ADR"]
TAGS = {"NCBI": "DIS", "CADEC": "ADR"}


def labels_of(task: str, heads: str) -> list[str]:
    """The BIO labels the head that scores ``task`` predicts."""
    tag = TAGS[task]
    return SHARED if heads == "shared" else ["O", f"B-{tag}", f"I-{tag}"]


ROOT = Path(__file__).resolve().parents[1]


def documents(mentions: Any) -> list[tuple[str, list[tuple[int, int]]]]:
    """``(text, entity spans)`` per document from a reader's mentions."""
    by_doc: dict[str, tuple[str, list[tuple[int, int]]]] = {}
    for m in mentions:
        by_doc.setdefault(m.doc_id, (m.text, []))[1].extend(m.spans)
    return list(by_doc.values())


def encode(
    docs: list, tokenizer: Any, tag: str, names: list[str], max_len: int
) -> list[dict[str, Any]]:
    """Rows of word pieces with BIO labels (special tokens -100), one per text window.

    ``names`` are the head's labels; ``tag`` the entity type of ``docs``' spans.
    """
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
                    labels.append(names.index(f"{'B' if begin else 'I'}-{tag}"))
                inside = span
            rows.append(
                {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
            )
    return rows


def f1(
    model: Any, rows: list[dict[str, Any]], collator: Any, names: list[str]
) -> float:
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
                gold.append([names[int(t)] for t in y[keep]])
                pred.append([names[int(t)] for t in p[keep]])
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
        names = labels_of(name, args.heads)
        tr = encode(train, tokenizer, tag, names, args.max_len)
        te = encode(test, tokenizer, tag, names, args.max_len)
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
        seed=args.seed,
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
    args = parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    path = minilm_path()  # the shipped MiniLM as a Hugging Face model directory
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    names = {task: labels_of(task, args.heads) for task in TAGS}
    config = AutoConfig.from_pretrained(
        path,
        num_hidden_layers=3,
        num_labels=len(names["NCBI"]),
        trust_remote_code=False,  # never run code from a model directory
    )
    model = AutoModelForTokenClassification.from_pretrained(
        path, config=config, trust_remote_code=False
    )
    collator = DataCollatorForTokenClassification(tokenizer)
    tasks = load_tasks(args.data, tokenizer, args)
    (a_train, a_test), (b_train, b_test) = tasks["NCBI"], tasks["CADEC"]
    print(
        f"rows: NCBI {len(a_train)}/{len(a_test)}, CADEC {len(b_train)}/{len(b_test)}"
    )
    results: dict[str, dict[str, Any]] = defaultdict(dict)

    def report(step: str, m: Any) -> None:
        ncbi = with_head(m, ncbi_head) if ncbi_head is not None else m
        r = results[step] = {"NCBI": f1(ncbi, a_test, collator, names["NCBI"])}
        # the NCBI model of per-task heads has no CADEC head to score yet
        if args.heads == "shared" or step != "after NCBI":
            r["CADEC"] = f1(m, b_test, collator, names["CADEC"])
        cadec = f"{r['CADEC']:5.1f}" if "CADEC" in r else "    –"
        print(f"{step:24s} F1 NCBI {r['NCBI']:5.1f}  CADEC {cadec}", flush=True)

    ncbi_head = None
    train(model, a_train, collator, args)
    report("after NCBI", model)
    if args.heads == "per-task":
        ncbi_head = copy.deepcopy(model.classifier)
        model.classifier.requires_grad_(False)  # the state covers the shared encoder
    state = consolidate(
        model, a_train, data_collator=collator, task="NCBI", fisher=args.fisher
    )
    if args.heads == "per-task":
        torch.manual_seed(args.seed + 1)
        model.classifier = torch.nn.Linear(
            model.config.hidden_size, len(names["CADEC"])
        )  # CADEC's own head, new
    plain = copy.deepcopy(model)
    train(plain, b_train, collator, args)
    report("CADEC, no penalty", plain)
    strengths = [("lam", v) for v in args.lam] + [("budget", v) for v in args.budget]
    for kind, value in strengths:
        step = f"CADEC, KFC {'λ' if kind == 'lam' else 'ε'}={value:g}"
        trainer = train(
            copy.deepcopy(model),
            b_train,
            collator,
            args,
            states=[state],
            strength=Strength(**{kind: value}),
        )
        report(step, trainer.model)
        results[step]["kfc"] = trainer.kfc_status()
    summarize(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def with_head(model: Any, head: torch.nn.Module) -> Any:
    """A copy of ``model`` that scores with ``head`` (its encoder is ``model``'s)."""
    scored = copy.deepcopy(model)
    scored.classifier = head
    return scored


def parse_args() -> argparse.Namespace:
    """The example's options, with the sizes ``--small`` implies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--small", action="store_true", help="a few minutes on CPU")
    parser.add_argument("--lam", type=float, nargs="*", default=[], help="fixed λ")
    parser.add_argument(
        "--budget",
        type=float,
        nargs="*",
        default=[DEFAULT_BUDGET, 0.001],
        help="forgetting budgets ε, nats per labelled token (default: the product's)",
    )
    parser.add_argument("--fisher", default="empirical")
    parser.add_argument("--epochs", type=float, default=None, help="3 (small: 2)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0, help="training and head seed")
    parser.add_argument("--out", type=Path, default=Path("runs/ner_kfc"))
    parser.add_argument(
        "--heads",
        choices=("per-task", "shared"),
        default="per-task",
        help="a BIO head per corpus on the shared encoder, or one head for both",
    )
    args = parser.parse_args()
    args.max_len = 64 if args.small else 128
    if args.epochs is None:
        args.epochs = 2.0 if args.small else 3.0
    args.train_rows = 400 if args.small else 100_000
    args.test_rows = 100_000  # every test window: scoring is cheap
    return args


def summarize(results: dict[str, dict[str, Any]]) -> None:
    """Per strength: the share of NCBI's forgetting removed and CADEC's F1 cost."""
    before = results["after NCBI"]["NCBI"]
    plain = results["CADEC, no penalty"]
    lost_plain = before - plain["NCBI"]
    for step, r in results.items():
        if not step.startswith("CADEC, KFC") or lost_plain <= 0:
            continue
        removed = 100 * (1 - (before - r["NCBI"]) / lost_plain)
        cost = plain["CADEC"] - r["CADEC"]
        print(
            f"{step:24s} NCBI forgetting removed {removed:4.0f}%, CADEC cost {cost:+.1f}"
        )


if __name__ == "__main__":
    main()
