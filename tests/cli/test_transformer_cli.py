"""The transformer ranker through the CLI, on a tiny random checkpoint made here.

train → consolidate (kfac, ewc, l2) → train --init --penalty → evaluate.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kfacel.cli import main
from kfacel.consolidation import load_state
from tests._synth import CODES, WORDS, write_code_tasks, write_tiny_encoder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tasks A and B, a tiny encoder checkpoint, and a transformer trained on A."""
    root = tmp_path_factory.mktemp("transformer")
    tasks = write_code_tasks(root / "tasks")
    encoder = write_tiny_encoder(root / "encoder", [*WORDS, *CODES])
    model = root / "v1"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(
            ["train", "--task", str(tasks / "A"), "--model", "transformer",
             "--encoder", str(encoder), "--layers", "1", "--out", str(model),
             "--epochs", "1", "--batch-size", "16", "--max-length", "12",
             "--no-types", "--no-features", "--lr", "1e-3"]
        ) == 0  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return tasks, model


@pytest.mark.parametrize("method", ["kfac", "ewc", "l2"])
def test_transformer_consolidates_and_trains_on(trained, tmp_path, capsys, method):
    tasks, v1 = trained
    mine, v2 = tmp_path / "v1", tmp_path / "v2"
    shutil.copytree(v1, mine)
    extra = ["--uncovered", "diagonal"] if method == "kfac" else []
    assert main(
        ["consolidate", str(mine), "--task", str(tasks / "A"), "--method", method,
         "--batch-size", "16", *extra]
    ) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["state_bytes"] > 0
    (state,) = load_state(mine)
    assert state.method == method
    if method == "kfac":  # HF's shared position ids: a factor, every position counted
        pos = state.curvature["encoder.embeddings.position_embeddings"]
        assert pos.A.sum().item() == pytest.approx(1.0)
    assert main(
        ["train", "--task", str(tasks / "B"), "--init", str(mine), "--penalty",
         method, "--lam", "10", "--out", str(v2), "--epochs", "1",
         "--batch-size", "8"]
    ) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["history"] == ["A", "B"]
    assert [s.task for s in load_state(v2)] == ["A"]
    log = json.loads((v2 / "train_log.json").read_text())
    assert log["epochs"][-1]["penalty"] > 0  # the penalty was active
    out = tmp_path / "eval.json"
    assert main(
        ["evaluate", str(v2), "--task", str(tasks / "A"), "--output", str(out)]
    ) == 0  # fmt: skip
    result = json.loads(out.read_text())["A"]
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["n"] == 16
