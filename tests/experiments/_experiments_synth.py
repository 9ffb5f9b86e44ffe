"""Two tiny code-word tasks that forget each other; a config of tiny CNNs on them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests._synth import CODE_WORDS, WORDS

from kfacel.data.records import Candidate, LinkingExample
from kfacel.experiments.config import ExperimentConfig
from kfacel.tasks.directory import write_task

CODES = CODE_WORDS[:25]
"""Concept names of the synthetic tasks (25 code words)."""
SPANS = {"a": range(0, 8), "b": range(8, 16), "c": range(16, 24)}


def code_examples(name: str, words: range, n: int, seed: int) -> list[LinkingExample]:
    """Mention ``WORDS[w]`` links to concept ``CODES[w]``: no string overlap."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = rng.choice(words)
        pool = [w, *rng.sample([x for x in words if x != w], 3)]
        rng.shuffle(pool)
        cands = tuple(Candidate(f"C{x}", CODES[x]) for x in pool)
        left = " ".join(rng.choices(WORDS, k=2))
        out.append(LinkingExample(WORDS[w], left, "", cands, f"C{w}", f"{name}{i}"))
    return out


def write_tasks(root: Path, names: tuple[str, ...] = ("a", "b")) -> dict[str, Path]:
    """Task directories of ``names`` under ``root``."""
    out = {}
    for k, name in enumerate(names):
        splits = {
            split: code_examples(name, SPANS[name], n, 10 * k + j)
            for j, (split, n) in enumerate((("train", 48), ("dev", 16), ("test", 16)))
        }
        out[name] = write_task(root / name, splits, {"name": name})
    return out


def tiny_config(paths: dict[str, Path], **top: Any) -> ExperimentConfig:
    """A tiny CNN (random 16-d embeddings), 1 epoch a task, the given top-level keys."""
    data: dict[str, Any] = {
        "name": "tiny",
        "tasks": [{"name": n, "path": str(p)} for n, p in paths.items()],
        "model": {
            "name": "cnn",
            "hidden": 8,
            "embed_dim": 8,
            "embeddings_from": None,
            "num_features": 0,
            "num_types": 0,
            "dropout": 0.0,
        },
        "train": {"epochs": 1, "lr": 3e-3, "batch_size": 16, "eval_batch_size": 64},
        "methods": ["none", "kfac"],
        "lam_grid": [10.0],
        "tiers": [1, 2],
        **top,
    }
    return ExperimentConfig.from_dict(data)
