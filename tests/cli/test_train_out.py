"""`kfacel train --out` against the user's files: nothing deleted or changed unless asked.

Each probe compares every file under the work directory before and after one `train`
call: refused placements must leave them all as they were, accepted ones may only add
the new model directory (or, with --overwrite, replace an existing model directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from kfacel import _io
from kfacel._lock import write_lock
from kfacel.cli import main
from kfacel.consolidation import load_state
from kfacel.tasks.directory import write_task
from kfacel.training import continual
from tests._synth import TASK_A, TASK_B, code_task

CNN = ["--model", "cnn", "--hidden", "8", "--no-types", "--no-features"]
FAST = ["--epochs", "1", "--max-length", "12"]


@pytest.fixture
def work(tmp_path: Path, capsys) -> Path:
    """Tasks A and B, model v1 (A, consolidated twice over) and some user files."""
    for name, words, seed in (("A", TASK_A, 0), ("B", TASK_B, 10)):
        splits = {s: code_task(name, words, 24, seed + i) for i, s in enumerate(("train", "dev", "test"))}  # fmt: skip
        write_task(tmp_path / name, splits, {"name": name})
    v1 = tmp_path / "v1"
    assert main(["train", "--task", str(tmp_path / "A"), "--out", str(v1), *CNN, *FAST]) == 0  # fmt: skip
    assert main(["consolidate", str(v1), "--task", str(tmp_path / "A"), "--method", "kfac"]) == 0  # fmt: skip
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("mine too", encoding="utf-8")
    capsys.readouterr()
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def train_b(work: Path, out: str, *extra: str) -> int:
    args = ["train", "--task", str(work / "B"), "--init", str(work / "v1")]
    return main([*args, "--penalty", "kfac", "--lam", "1", "--out", out, *FAST, *extra])


@pytest.mark.parametrize(
    ("out", "why"),
    [
        (".", "overlaps --init"),  # the parent of --init and of the tasks
        ("v1", "overlaps --init"),
        ("v1/consolidation", "overlaps --init"),
        ("B", "overlaps --task"),
        ("B/sub", "overlaps --task"),
        ("notes", "not a kfacel model directory"),
        ("file.txt", "is a file"),
    ],
)
def test_an_out_that_would_lose_user_files_is_refused_before_training(
    work, capsys, out, why
):
    before = snapshot(work)
    assert train_b(work, str(work / out)) == 2
    err = capsys.readouterr().err
    assert why in err
    assert err.count("\n") == 1  # one line, no traceback
    assert snapshot(work) == before
    assert not list(work.rglob(".*"))  # no temporary leftovers


def test_an_existing_model_is_replaced_only_with_overwrite(work, capsys):
    assert train_b(work, str(work / "v2")) == 0
    before = snapshot(work)
    assert train_b(work, str(work / "v2")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(work) == before
    assert train_b(work, str(work / "v2"), "--seed", "3", "--overwrite") == 0
    after = snapshot(work)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed
    assert all(k.startswith("v2/") for k in changed)
    assert (
        json.loads((work / "v2" / "config.json").read_text())["training"]["seed"] == 3
    )


def test_a_model_holding_the_users_files_is_not_replaced(work, capsys):
    """--overwrite replaces kfacel's model, never notes or results put inside it."""
    out = work / "v2"
    assert train_b(work, str(out)) == 0
    assert main(["consolidate", str(out), "--task", str(work / "B")]) == 0
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    (out / "eval").mkdir()
    capsys.readouterr()
    before = snapshot(work)
    assert train_b(work, str(out), "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        f"--out {out} holds files kfacel did not write (eval/, notes.txt): move them, "
        "or choose another --out"
    )
    assert snapshot(work) == before
    (out / "notes.txt").unlink()
    (out / "eval").rmdir()
    assert train_b(work, str(out), "--overwrite") == 0  # its states are its own


def test_an_empty_out_is_used(work):
    assert train_b(work, str(work / "empty")) == 0
    assert [s.task for s in load_state(work / "empty")] == ["A"]


def test_states_are_in_place_before_the_model_directory_appears(work, monkeypatch):
    # a kill right after the rename used to leave a model without its states
    seen: list[list[str]] = []
    real = _io._swap_in

    def spy(tmp: Path, directory: Path, replace) -> None:
        seen.append(sorted(p.name for p in (tmp / "consolidation").iterdir()))
        real(tmp, directory, replace)

    monkeypatch.setattr(_io, "_swap_in", spy)
    assert train_b(work, str(work / "v2")) == 0
    assert seen == [["00-A.json", "00-A.safetensors"]]

    def killed(tmp: Path, directory: Path, replace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_io, "_swap_in", killed)
    assert train_b(work, str(work / "v3")) == 130  # "kfacel: interrupted"
    assert not (work / "v3").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_random_placements_never_touch_files_kfacel_did_not_create(work, capsys):
    rng = random.Random(0)
    places = [".", "v1", "v1/consolidation", "v1/x", "A", "A/x", "B", "notes",
              "notes/x", "file.txt", "new", "new/deeper", "empty"]  # fmt: skip
    for _ in range(12):
        out = rng.choice(places)
        task = rng.choice(["A", "B"])
        before = snapshot(work)
        args = ["train", "--task", str(work / task), "--init", str(work / "v1")]
        code = main([*args, "--out", str(work / out), *FAST])
        capsys.readouterr()
        after = snapshot(work)
        lost = {k for k in before if after.get(k) != before[k]}
        assert not lost, (out, task, sorted(lost)[:3])
        if code == 0:  # a new model: start the next probe from the same files
            assert {k for k in after if k not in before} <= {
                k for k in after if k.startswith(out.rstrip("/") + "/")
            }


def hf_checkpoint(path: Path) -> Path:
    """A Hugging Face sentence-transformers checkpoint's layout (config and weights too)."""
    (path / "1_Pooling").mkdir(parents=True)
    (path / "1_Pooling" / "config.json").write_text(
        '{"pooling_mode_mean_tokens": true}'
    )
    (path / "config.json").write_text(
        json.dumps({"architectures": ["BertModel"], "model_type": "bert"})
    )
    (path / "model.safetensors").write_bytes(b"not kfacel's weights")
    (path / "README.md").write_text("# a checkpoint\n")
    return path


def test_a_hugging_face_checkpoint_is_never_replaced(work, capsys):
    hf = hf_checkpoint(work / "hf")
    before = snapshot(work)
    assert train_b(work, str(hf), "--overwrite") == 2
    err = capsys.readouterr().err
    assert "not a kfacel model directory" in err
    assert err.count("\n") == 1
    assert snapshot(work) == before


def test_an_out_that_is_the_encoder_is_refused(work, capsys):
    hf = hf_checkpoint(work / "hf")
    before = snapshot(work)
    args = ["train", "--task", str(work / "A"), *CNN, *FAST, "--overwrite"]
    assert main([*args, "--encoder", str(hf), "--out", str(hf)]) == 2
    assert f"overlaps --encoder {hf}" in capsys.readouterr().err
    assert main([*args, "--encoder", str(hf), "--out", str(hf / "sub")]) == 2
    assert snapshot(work) == before


def test_an_older_kfacel_model_directory_still_counts_as_kfacels(work):
    config = work / "v1" / "config.json"
    meta = json.loads(config.read_text())
    assert meta.pop("format") == "kfacel-model/1"
    config.write_text(json.dumps(meta))  # as versions before the mark wrote it
    assert train_b(work, str(work / "v2")) == 0
    assert train_b(work, str(work / "v1b"), "--seed", "1") == 0
    (work / "v1b" / "config.json").write_text(json.dumps(meta))
    assert train_b(work, str(work / "v1b"), "--overwrite") == 0


def test_a_directory_that_appears_during_training_is_kept(work, capsys, monkeypatch):
    out = work / "v2"
    real = continual.update_linker

    def train_while_someone_writes_out(*args, **kwargs):
        log = real(*args, **kwargs)
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        return log

    # the handler imports it when it runs: patch it where it is defined
    monkeypatch.setattr(continual, "update_linker", train_while_someone_writes_out)
    assert train_b(work, str(out)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1
    assert "appeared or changed while kfacel was writing it" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_a_second_train_into_the_same_out_is_refused(work, capsys):
    out = work / "v2"
    with write_lock(out, "train"):  # the first run, still training
        assert train_b(work, str(out)) == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by kfacel train, pid {os.getpid()}" in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_evaluate_output_never_replaces_what_kfacel_did_not_write(work, capsys):
    v1, task = str(work / "v1"), str(work / "A")
    before = snapshot(work)
    for output in (work / "v1" / "model.safetensors", work / "file.txt"):
        assert main(["evaluate", v1, "--task", task, "--output", str(output)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "overlaps MODEL_DIR" in err[0]
    assert "not a kfacel evaluation file" in err[1]
    assert snapshot(work) == before
    out = str(work / "eval.json")
    assert main(["evaluate", v1, "--task", task, "--output", out]) == 0
    assert main(["evaluate", v1, "--task", task, "--output", out]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["evaluate", v1, "--task", task, "--output", out, "--overwrite"]) == 0
