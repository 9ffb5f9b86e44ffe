"""KFC against LoRA-based continual learning on the NER example (NCBI Disease → CADEC).

The setting of ``examples/ner_kfc.py`` (a MiniLM token classifier, the first 3 layers of
the shipped weights): train NCBI, then CADEC with each method from the same NCBI model,
and score NCBI afterwards. ``--heads per-task`` (the default): a BIO head per corpus on
the shared encoder, NCBI scored with its own head. ``--heads shared``: one head over both
label sets, trained on both corpora and covered by KFC (CADEC's rows then mark disease
tokens O, so every method is taught to drop NCBI's labels: class competition, which the
example's docstring describes).

| method | what trains on CADEC | old data |
|---|---|---|
| ``full`` | every encoder weight, no protection | no |
| ``full-kfc`` | every encoder weight, KFC (the default budget) | no |
| ``lora`` | NCBI's LoRA adapter goes on training, no protection | no |
| ``lora-kfc`` | the same adapter, KFC on it (the default budget) | no |
| ``olora`` | a new adapter orthogonal to NCBI's (merged), ``kfacel.hf.OLoRACallback`` | no |
| ``ilora`` | I-LoRA (``kfacel.hf.ILoRATrainer``), replaying 10% of NCBI's rows | **yes** |

I-LoRA's memory rows add its consistency term only with per-task heads (the CADEC model
has no NCBI head); with a shared head they keep their labels and are trained on too.

Per method and seed: NCBI's F1 after CADEC (and before), CADEC's F1, the share of NCBI's
forgetting removed against the plain run of the same family (``full`` for full
fine-tuning, ``lora`` for adapters), the bytes kept of NCBI besides the weights (KFC: the
state on disk; O-LoRA: the subspaces; I-LoRA: the replayed rows' token ids), and seconds
per training step.
Writes ``OUT/results.json`` (resumable: finished seeds are kept) and prints a table of
means with t intervals over seeds::

    python benchmarks/lora_continual.py --small --seeds 0 1 2 --out runs/lora-continual
    python benchmarks/lora_continual.py --small --heads shared --out runs/lora-shared
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import peft
import torch
from scipy import stats
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    Trainer,
    TrainingArguments,
)

from kfacel.consolidation import save_state
from kfacel.hf import (
    ILoRATrainer,
    KFCTrainer,
    OLoRACallback,
    consolidate,
    lora_subspaces,
    minilm_path,
)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("full", "full-kfc", "lora", "lora-kfc", "olora", "ilora")


def _example() -> Any:
    """``examples/ner_kfc.py`` as a module (its data loading and scoring)."""
    spec = importlib.util.spec_from_file_location(
        "ner_kfc", ROOT / "examples/ner_kfc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fit(
    model: Any, rows: list, collator: Any, args: Any, cls: Any = Trainer, **kw: Any
):
    """Train ``model`` with ``cls``; the seconds per optimizer step.

    An adapter trains at ``--lora-lr`` (LoRA's usual ten times full fine-tuning's rate:
    at full fine-tuning's, these few steps leave the adapter predicting no entity).
    """
    lora = isinstance(getattr(model, "bert", None), peft.PeftModel)
    lr = args.lora_lr if lora else args.lr
    targs = TrainingArguments(
        output_dir=str(args.out / "trainer"), per_device_train_batch_size=16,
        num_train_epochs=args.epochs, learning_rate=lr, save_strategy="no",
        report_to=[], use_cpu=True, seed=args.seed, disable_tqdm=True,
    )  # fmt: skip
    trainer = cls(
        model=model, args=targs, train_dataset=rows, data_collator=collator, **kw
    )
    out = trainer.train()
    return trainer.model, out.metrics["train_runtime"] / max(1, out.global_step)


def _lora(encoder: Any, rank: int) -> Any:
    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], lora_dropout=0.0
    )
    return peft.get_peft_model(encoder, config)


def _bytes_of_state(state: Any) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, state)
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())


def _start(args: Any, lora: bool) -> tuple[Any, Any]:
    """The NCBI model and its NCBI head (per-task: frozen and set aside; shared: None)."""
    torch.manual_seed(args.seed)
    path = minilm_path()
    labels = len(args.names["NCBI"])
    config = AutoConfig.from_pretrained(
        path, num_hidden_layers=3, num_labels=labels, trust_remote_code=False
    )
    model = AutoModelForTokenClassification.from_pretrained(
        path, config=config, trust_remote_code=False
    )
    if lora:
        model.bert = _lora(model.bert, args.rank)
    model, _ = _fit(model, args.tasks["NCBI"][0], args.collator, args)
    if args.heads == "shared":
        return model, None
    head = copy.deepcopy(model.classifier)
    model.classifier.requires_grad_(False)
    return model, head


def _new_head(model: Any, seed: int) -> None:
    torch.manual_seed(seed + 1)
    model.classifier = torch.nn.Linear(model.config.hidden_size, 3)


def _run_method(method: str, start: Any, head: Any | None, args: Any) -> dict[str, Any]:
    """Train CADEC from the NCBI model ``start`` with ``method``; its scores and costs."""
    ncbi_train, b_train = args.tasks["NCBI"][0], args.tasks["CADEC"][0]
    model, kw, cls, stored = copy.deepcopy(start), {}, Trainer, 0
    if method.endswith("-kfc"):
        state = consolidate(model, ncbi_train, data_collator=args.collator, task="NCBI")
        kw, cls, stored = {"states": [state]}, KFCTrainer, _bytes_of_state(state)
    elif method == "olora":
        earlier = lora_subspaces(model)
        stored = sum(a.numel() * a.element_size() for a in earlier.values())
        model.bert = _lora(model.bert.merge_and_unload(), args.rank)
        kw = {"callbacks": [OLoRACallback(earlier, lam=args.olora_lam)]}
    elif method == "ilora":
        kept = ncbi_train[: max(1, len(ncbi_train) // 10)]
        memory = [
            {k: v for k, v in r.items() if k != "labels" or head is None} for r in kept
        ]
        kw, cls = {"memory": memory, "seed": args.seed}, ILoRATrainer
        stored = sum(8 * len(r["input_ids"]) for r in memory)  # int64 token ids
    if head is not None:  # per-task heads: CADEC's own, new
        _new_head(model, args.seed)
    model, step_s = _fit(model, b_train, args.collator, args, cls, **kw)
    return {
        "NCBI": args.score(model, head, "NCBI"),
        "CADEC": args.score(model, None, "CADEC"),
        "stored_bytes": stored,
        "step_seconds": step_s,
    }


def run_seed(args: Any) -> dict[str, Any]:
    """Every method of one seed."""
    out: dict[str, Any] = {}
    for family, methods in (("full", METHODS[:2]), ("lora", METHODS[2:])):
        start, head = _start(args, lora=family == "lora")
        out[f"{family}:before"] = {"NCBI": args.score(start, head, "NCBI")}
        for m in methods:
            if m in args.methods:
                out[m] = _run_method(m, start, head, args)
                print(f"seed {args.seed} {m}: {out[m]}", flush=True)
    return out


def summarize(results: dict[str, dict[str, Any]]) -> list[str]:
    """Per method: means over seeds with t intervals, forgetting removed, costs."""
    lines = ["| method | NCBI F1 after | CADEC F1 | forgetting removed | stored bytes | s/step |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for m in METHODS:
        rows = [r for r in results.values() if m in r]
        if not rows:
            continue
        family = "full" if m.startswith("full") else "lora"
        removed = [_removed(r, m, family) for r in rows if family in r]
        lines.append(
            f"| {m} | {_ci([r[m]['NCBI'] for r in rows])} | "
            f"{_ci([r[m]['CADEC'] for r in rows])} | {_ci(removed, '%')} | "
            f"{rows[0][m]['stored_bytes']} | "
            f"{statistics.median(r[m]['step_seconds'] for r in rows):.2f} |"
        )
    return lines


def _removed(r: dict[str, Any], m: str, family: str) -> float:
    before = r[f"{family}:before"]["NCBI"]
    lost_plain = before - r[family]["NCBI"]
    return (
        100.0 * (1 - (before - r[m]["NCBI"]) / lost_plain)
        if lost_plain > 0
        else float("nan")
    )


def _ci(values: list[float], unit: str = "") -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}{unit}"
    half = (
        stats.t.ppf(0.975, len(values) - 1)
        * statistics.stdev(values)
        / len(values) ** 0.5
    )
    return f"{mean:.1f}{unit} [{mean - half:.1f}, {mean + half:.1f}]"


def main() -> None:
    """Run the seeds not yet in ``OUT/results.json``; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--olora-lam", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-lr", type=float, default=5e-3)
    parser.add_argument("--rows", type=int, help="training rows a task (a smoke run)")
    parser.add_argument(
        "--heads",
        choices=("per-task", "shared"),
        default="per-task",
        help="a BIO head per corpus on the shared encoder, or one head for both",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/lora-continual"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    ex = _example()
    args.max_len, args.epochs = (64, 2.0) if args.small else (128, 3.0)
    args.train_rows = args.rows or (400 if args.small else 100_000)
    args.test_rows = args.rows or 100_000
    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), trust_remote_code=False)
    args.collator = DataCollatorForTokenClassification(tokenizer)
    args.tasks = ex.load_tasks(args.data, tokenizer, args)
    names = args.names = {t: ex.labels_of(t, args.heads) for t in ("NCBI", "CADEC")}

    def score(model: Any, head: Any, task: str) -> float:
        scored = ex.with_head(model, head) if head is not None else model
        return ex.f1(scored, args.tasks[task][1], args.collator, names[task])

    args.score = score
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for seed in args.seeds:
        if str(seed) in results:
            continue
        args.seed = seed
        results[str(seed)] = run_seed(args)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(summarize(results)))


if __name__ == "__main__":
    sys.exit(main())
