"""Accuracy@1 of trained linkers split by whether the generator found the gold itself.

PUBLIC-3 candidates are the gold plus the generator's best C-1 other concepts, so a
query whose gold is outside the generator's top C gets it inserted: a ranker can only
pick it from evidence other than name similarity (aliases, context, types) or from the
artefact that the inserted gold is the least similar candidate. This script rebuilds
each task's generator over its dictionary, marks test queries as ``found`` (gold in the
generator's top C with a positive score, the recall@C of docs/results.md) or ``inserted``,
and reports each model's accuracy@1 on both parts.

Usage::

    python benchmarks/ranker_subsets.py --data ../shared/data \
        TASK_DIR:MODEL_DIR [TASK_DIR:MODEL_DIR ...]

With ``--found-train OUT`` it instead copies ``TASK_DIR`` to ``OUT`` keeping only the
training queries whose gold the generator found (dev and test unchanged): a ranker
trained there never sees an inserted gold, as ``kfacel link`` never shows one.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from kfacel.data.readers import cadec_concepts, read_cadec, read_dictionary
from kfacel.linking.evaluate import predict
from kfacel.linking.linker import load_linker
from kfacel.retrieval.methods import build_generator
from kfacel.tasks.directory import load_task


def _concepts(data: Path, name: str) -> list:
    if name == "medmentions":
        return read_dictionary(data / "medmentions" / "st21pv_entities.txt")
    if name == "ncbi":
        return read_dictionary(data / "ncbi_disease" / "medic_06Jul2012.txt")
    if name == "cadec":
        return cadec_concepts(list(read_cadec(data / "cadec" / "CADEC.json")))
    raise ValueError(name)


def found_flags(gen, examples, c: int) -> list[bool]:
    """Whether each query's gold is among the generator's top ``c`` (positive score)."""
    hits = gen.search([e.mention for e in examples], c)
    return [
        any(gen.index_of(c.id) == gen.index_of(e.gold) and s > 0 for c, s in h)
        for e, h in zip(examples, hits, strict=True)
    ]


def write_found_train(task_dir: str, gen, out: Path) -> None:
    """Copy the task, keeping the training queries whose gold the generator found."""
    task = load_task(task_dir)
    c = int(task.info["candidates"]["num_candidates"])
    flags = found_flags(gen, task.train, c)
    shutil.copytree(task_dir, out, dirs_exist_ok=True)
    lines = Path(task_dir, "train.jsonl").read_text(encoding="utf-8").splitlines()
    kept = [line for line, f in zip(lines, flags, strict=True) if f]
    (out / "train.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    print(json.dumps({"task": task.name, "train": len(lines), "kept": len(kept)}))


def main() -> None:
    """Print one JSON line per (task, model)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--found-train", help="write a found-only training copy here")
    ap.add_argument("pairs", nargs="+", help="TASK_DIR:MODEL_DIR (or TASK_DIR)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.found_train:
        task = load_task(args.pairs[0])
        gen = build_generator(
            task.info["candidates"]["method"], _concepts(Path(args.data), task.name)
        )
        write_found_train(args.pairs[0], gen, Path(args.found_train))
        return
    generators: dict[str, tuple] = {}
    for pair in args.pairs:
        task_dir, model_dir = pair.split(":")
        task = load_task(task_dir)
        examples = task.split(args.split)
        c = int(task.info["candidates"]["num_candidates"])
        if task.name not in generators:
            gen = build_generator(
                task.info["candidates"]["method"], _concepts(Path(args.data), task.name)
            )
            generators[task.name] = gen
        gen = generators[task.name]
        hits = gen.search([e.mention for e in examples], c)
        found = [
            any(gen.index_of(c.id) == gen.index_of(e.gold) and s > 0 for c, s in h)
            for e, h in zip(examples, hits, strict=True)
        ]
        linker = load_linker(model_dir)
        logits = torch.cat(predict(linker.model, linker.batches(examples, 128)))
        right = []
        for e, row in zip(examples, logits, strict=True):
            g = e.gold_index
            right.append(
                bool(
                    (
                        row[g]
                        > row.masked_fill(torch.arange(len(row)) == g, float("-inf"))
                    ).all()
                )
            )
        out = {"task": task.name, "model": model_dir, "n": len(examples)}
        for label, flag in (("found", True), ("inserted", False)):
            part = [r for r, f in zip(right, found, strict=True) if f == flag]
            out[label] = {"n": len(part), "accuracy": sum(part) / max(1, len(part))}
        out["accuracy"] = sum(right) / len(right)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
