"""``kfacel forget``: a new model directory without the task's state; bad input refused."""

from __future__ import annotations

import json

import pytest
import torch

from kfacel.cli import main
from kfacel.consolidation import load_state
from kfacel.linking.linker import load_linker
from kfacel.models import is_model_dir
from kfacel.models.registry import file_sha256
from kfacel.tasks.directory import write_task
from tests._synth import TASK_A, TASK_B, code_task

CNN = ["--model", "cnn", "--hidden", "16", "--no-types", "--no-features"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A CNN trained on A, consolidated, then on B with KFC, consolidated."""
    root = tmp_path_factory.mktemp("forget")
    for name, words, seed in (("A", TASK_A, 0), ("B", TASK_B, 10)):
        splits = {
            s: code_task(name, words, n, seed + i)
            for i, (s, n) in enumerate((("train", 48), ("dev", 16), ("test", 16)))
        }
        write_task(root / name, splits, {"name": name})
    v1, v2 = root / "v1", root / "v2"
    common = ["--epochs", "1", "--max-length", "16"]
    assert (
        main(["train", "--task", str(root / "A"), "--out", str(v1), *CNN, *common]) == 0
    )
    assert main(["consolidate", str(v1), "--task", str(root / "A")]) == 0
    init = ["--init", str(v1), "--penalty", "kfac"]
    assert (
        main(["train", "--task", str(root / "B"), "--out", str(v2), *init, *common])
        == 0
    )
    assert main(["consolidate", str(v2), "--task", str(root / "B")]) == 0
    return v2


def _digests(directory) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("method", ["ssd", "kfac-ssd"])
def test_forget_writes_a_model_without_the_task(
    model, tmp_path, capsys, method
) -> None:
    before = _digests(model)
    out = tmp_path / "forgot"
    args = ["forget", str(model), "--task", "A", "--out", str(out), "--method", method]
    assert main([*args, "--alpha", "1", "--lam", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "A"
    assert summary["retained"] == ["B"]
    assert 0 < summary["dampened"] < summary["covered"]
    assert _digests(model) == before  # the input is left as it was
    assert is_model_dir(out)
    old, new = load_linker(model), load_linker(out)
    (b_state,) = load_state(out, new.model)
    assert b_state.task == "B"
    _, b_before = load_state(model, old.model)
    moved = [
        n
        for n, p in new.model.named_parameters()
        if not torch.equal(p, dict(old.model.named_parameters())[n])
    ]
    assert moved  # the weights were dampened ...
    for n in moved:  # ... and B's anchor (trained from A's weights) alike
        assert not torch.equal(b_state.anchor[n], b_before.anchor[n])
    assert new.meta["forgotten"][0]["task"] == "A"


def test_an_unknown_task_is_refused_in_one_line(model, tmp_path, capsys) -> None:
    out = tmp_path / "x"
    assert main(["forget", str(model), "--task", "C", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "no consolidation state for task 'C'; known: 'A', 'B'" in err
    assert not out.exists()


def test_an_output_kfacel_did_not_write_is_refused(model, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["forget", str(model), "--task", "A", "--out", str(out)]) == 2
    assert "is not a kfacel model directory" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
