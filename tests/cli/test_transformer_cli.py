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


@pytest.fixture(scope="module")
def lora_trained(trained, tmp_path_factory):
    """A LoRA ranker trained on A (the same tiny encoder)."""
    tasks, v1 = trained
    pytest.importorskip("peft")
    encoder = v1.parent / "encoder"
    model = tmp_path_factory.mktemp("lora") / "v1"
    torch.set_num_threads(1)
    assert main(
        ["train", "--task", str(tasks / "A"), "--model", "transformer",
         "--encoder", str(encoder), "--layers", "1", "--out", str(model),
         "--epochs", "1", "--batch-size", "16", "--max-length", "12",
         "--no-types", "--no-features", "--lr", "1e-2", "--lora-rank", "2"]
    ) == 0  # fmt: skip
    return tasks, model


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--olora", "0.5"], "O-LoRA λ=0.5"),
        (["--ilora", "--replay", "A"], "I-LoRA with a memory of 32 queries"),
    ],
)
def test_the_lora_baselines_train_on_from_a_lora_ranker(
    lora_trained, tmp_path, capsys, extra, line
) -> None:
    tasks, v1 = lora_trained
    extra = [str(tasks / "A") if e == "A" else e for e in extra]
    v2 = tmp_path / "v2"
    assert main(
        ["train", "--task", str(tasks / "B"), "--init", str(v1), "--out", str(v2),
         "--epochs", "1", "--batch-size", "8", *extra]
    ) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert line in captured.err
    assert "unprotected" not in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["history"] == ["A", "B"]
    continual = json.loads((v2 / "config.json").read_text())["continual"]
    assert ("olora" in continual) == ("--olora" in extra)
    assert ("ilora" in continual) == ("--ilora" in extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--olora", "0.5"], "'s ranker has no LoRA adapter (train it with"),
        (["--ilora"], "--ilora replays old queries: give --replay TASK_DIR"),
        (["--olora", "0.5", "--penalty", "l2", "--lam", "1"], "--olora must be a λ"),
    ],
)
def test_the_lora_baselines_are_refused_in_one_line(
    trained, tmp_path, capsys, extra, message
) -> None:
    tasks, v1 = trained  # a ranker without adapters
    v2 = tmp_path / "v2"
    assert main(
        ["train", "--task", str(tasks / "B"), "--init", str(v1), "--out", str(v2),
         "--epochs", "1", *extra]
    ) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]
    assert not v2.exists()
