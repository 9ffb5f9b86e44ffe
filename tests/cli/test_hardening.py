"""Hardening on the command line: nothing lost, every bad input named in one line.

Each test is a reproduction that failed before: an --out that would destroy data, a
bad number or device, a bad link input line, Ctrl-C; the exit code and the one line on
stderr are compared with what the issue asks.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kfacel._lock import write_lock
from kfacel.cli import main
from kfacel.tasks.directory import load_task

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"


def _mentions(path: Path, n: int = 6) -> Path:
    """A JSONL of ``n`` one-mention documents over two dictionary concepts."""
    lines = []
    for i in range(n):
        name, cid = ("fever", "C001") if i % 2 else ("cough", "C002")
        text = f"Patient {i} has {name} today."
        lines.append(json.dumps({"doc_id": f"d{i}", "text": text, "mention": name,
                                 "concept_id": cid}))  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _dictionary(path: Path, bom: bool = False) -> Path:
    rows = "C001\tT184\tFever\nC002\tT184\tCough\nC003\tT047\tFlu\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + rows.encode())
    return path


def _prepare(inp: Path, dictionary: Path, out: Path, *extra: str) -> int:
    return main(
        ["prepare", "jsonl", "--input", str(inp), "--dictionary", str(dictionary),
         "--out", str(out), "--num-candidates", "2", "--split-by-document",
         "0.5,0.2,0.3", *extra]
    )  # fmt: skip


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- item 2: prepare --out ------------------------------------------------------------


def test_prepare_refuses_an_out_that_holds_its_input(tmp_path: Path, capsys) -> None:
    """`--input D/train.jsonl --out D`: refused, the input untouched."""
    data = tmp_path / "D"
    data.mkdir()
    inp, dic = _mentions(data / "train.jsonl"), _dictionary(tmp_path / "d.tsv")
    before = _snapshot(tmp_path)
    assert _prepare(inp, dic, data) == 2
    err = capsys.readouterr().err
    assert "holds the input" in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_prepare_refuses_a_non_task_directory(tmp_path: Path, capsys) -> None:
    """An existing non-empty directory that is not a task is never replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep", encoding="utf-8")
    inp, dic = _mentions(tmp_path / "m.jsonl"), _dictionary(tmp_path / "d.tsv")
    assert _prepare(inp, dic, out, "--overwrite") == 2
    assert "not a kfacel task directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_prepare_replaces_a_task_only_with_overwrite(tmp_path: Path, capsys) -> None:
    """A second prepare into a task: refused, then replaced with --overwrite."""
    inp, dic = _mentions(tmp_path / "m.jsonl"), _dictionary(tmp_path / "d.tsv")
    out = tmp_path / "t"
    assert _prepare(inp, dic, out) == 0
    assert _prepare(inp, dic, out, "--seed", "3") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert load_task(out).info["seed"] == 13
    assert _prepare(inp, dic, out, "--seed", "3", "--overwrite") == 0
    assert load_task(out).info["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tsv", "m.jsonl", "t"]


def test_prepare_checks_out_before_reading(tmp_path: Path, capsys) -> None:
    """A refused --out is reported even when the inputs could not be read."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "x").write_text("x", encoding="utf-8")
    assert _prepare(tmp_path / "missing.jsonl", tmp_path / "no.tsv", out) == 2
    assert "not a kfacel task directory" in capsys.readouterr().err


def test_prepare_benchmark_refuses_before_building(tmp_path: Path, capsys) -> None:
    """`prepare benchmark --out` onto a non-task `cadec/`: refused, nothing read."""
    (tmp_path / "out" / "cadec").mkdir(parents=True)
    (tmp_path / "out" / "cadec" / "CADEC.json").write_text("[]", encoding="utf-8")
    (tmp_path / "data").mkdir()
    code = main(["prepare", "benchmark", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out"), "--task", "cadec"])  # fmt: skip
    assert code == 2
    assert "not a kfacel task directory" in capsys.readouterr().err


def test_failed_prepare_leaves_no_temporary(tmp_path: Path, capsys) -> None:
    """An error after reading (no usable mention) leaves no `.t.XXXX` behind."""
    inp = _mentions(tmp_path / "m.jsonl")
    dic = tmp_path / "d.tsv"
    dic.write_text("C007\tT0\tRash\nC008\tT0\tItch\n", encoding="utf-8")
    assert _prepare(inp, dic, tmp_path / "t") == 2
    assert "no usable mention" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tsv", "m.jsonl"]


# --- items 5-7: what prepare reads -----------------------------------------------------


def test_prepare_reads_a_bom_dictionary_as_plain_ids(tmp_path: Path) -> None:
    """A BOM dictionary gives concept C001, not U+FEFF C001."""
    inp = _mentions(tmp_path / "m.jsonl")
    assert _prepare(inp, _dictionary(tmp_path / "d.tsv", bom=True), tmp_path / "t") == 0
    task = load_task(tmp_path / "t")
    ids = {c.id for ex in task.train + task.dev + task.test for c in ex.candidates}
    assert "C001" in ids
    assert not any(i.startswith("\ufeff") for i in ids)


def test_one_concept_dictionary_is_named(tmp_path: Path, capsys) -> None:
    """One usable concept: a line naming the dictionary, not `zero-size array`."""
    inp = _mentions(tmp_path / "m.jsonl")
    dic = tmp_path / "one.tsv"
    dic.write_text("C001\tT184\tFever\nC002\tT184\t \n", encoding="utf-8")
    assert _prepare(inp, dic, tmp_path / "t") == 2
    err = capsys.readouterr().err
    assert "one.tsv: 1 usable concept" in err
    assert "zero-size" not in err


def test_prepare_jsonl_with_a_latin1_line_names_it(tmp_path: Path, capsys) -> None:
    """A Latin-1 byte in line 3 of the input: file:3 on one line."""
    inp = _mentions(tmp_path / "m.jsonl")
    inp.write_bytes(inp.read_bytes().replace(b"fever today", b"f\xe8ver today", 1))
    assert _prepare(inp, _dictionary(tmp_path / "d.tsv"), tmp_path / "t") == 2
    assert "m.jsonl:2: not UTF-8" in capsys.readouterr().err


# --- item 9: numbers, devices and link inputs refused up front -------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["link", "M", "--dictionary", "d", "--text", "a", "--mention", "a",
          "--top", "-2"], "--top"),
        (["link", "M", "--dictionary", "d", "--input", "q", "--threads", "-1"],
         "--threads"),
        (["evaluate", "M", "--task", "T", "--batch-size", "0"], "--batch-size"),
        (["evaluate", "M", "--task", "T", "--device", "cuda"], "--device"),
        (["evaluate", "M", "--task", "T", "--device", "gpu"], "--device"),
        (["consolidate", "M", "--task", "T", "--max-examples", "-5"],
         "--max-examples"),
        (["consolidate", "M", "--task", "T", "--device", "cuda:0"], "--device"),
        (["consolidate", "M", "--task", "T", "--seed", "-1"], "--seed"),
        (["prepare", "jsonl", "--input", "i", "--dictionary", "d", "--out", "o",
          "--context-words", "-1"], "--context-words"),
        (["prepare", "jsonl", "--input", "i", "--dictionary", "d", "--out", "o",
          "--num-candidates", "x"], "--num-candidates"),
    ],
)  # fmt: skip
def test_bad_numbers_and_devices_are_refused_naming_the_option(
    argv: list[str], option: str, capsys, monkeypatch
) -> None:
    """Argparse refuses the value (exit 2) with the option named, before any work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line",
    [
        '{"text": "None of it", "mention": null}',
        '{"text": "she  has fever", "mention": "  "}',
        '{"text": "fever!! again", "mention": "!!"}',
        '{"text": "she has fever", "mention": "fever", "start": "8"}',
        '{"text": "a fever", "mention": " fever", "start": true}',
        '{"text": NaN, "mention": "nan"}',
        '{"text": "she has fever"}',
        '["she has fever", "fever"]',
    ],
)
def test_link_input_with_a_bad_line_is_refused_with_file_and_line(
    tmp_path: Path, line: str, capsys
) -> None:
    """A null/blank/punctuation mention, a non-int start, a NaN text: file:2, first."""
    inp = tmp_path / "q.jsonl"
    inp.write_text('{"text": "a cough", "mention": "cough"}\n' + line + "\n")
    code = main(["link", str(tmp_path / "no-model"), "--dictionary", "d.tsv",
                 "--input", str(inp)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "q.jsonl:2:" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("mention", ["", "!"])
def test_link_refuses_a_blank_mention_option(tmp_path: Path, capsys, mention) -> None:
    """`--mention ""` (it matched at 0 before) or only punctuation: names --mention."""
    code = main(["link", str(tmp_path), "--dictionary", "d.tsv", "--text", "abc!",
                 "--mention", mention])  # fmt: skip
    assert code == 2
    assert "--mention" in capsys.readouterr().err


# --- smaller: Ctrl-C -------------------------------------------------------------------


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, capsys, monkeypatch) -> None:
    """KeyboardInterrupt in a handler: `kfacel: interrupted`, 130, no temporary."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("kfacel.tasks.directory._write", interrupted)
    inp, dic = _mentions(tmp_path / "m.jsonl"), _dictionary(tmp_path / "d.tsv")
    assert _prepare(inp, dic, tmp_path / "t") == 130
    assert capsys.readouterr().err.strip() == "kfacel: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tsv", "m.jsonl"]


def test_an_os_error_is_one_line_not_a_traceback(tmp_path: Path, capsys) -> None:
    """`--input` naming a directory: the OS error on one line, exit 1."""
    code = main(["link", str(tmp_path), "--dictionary", "d.tsv",
                 "--input", str(tmp_path)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("kfacel link: error: ")
    assert len(err.strip().splitlines()) == 1


# --- link inputs, tensor writes and the name-matrix cache ------------------------------


@pytest.mark.parametrize(
    ("option", "text", "mention"),
    [("--mention", "a fever", "f\udcffever"), ("--text", "a\udcff fever", "fever")],
)  # fmt: skip
def test_link_names_an_option_with_a_lone_surrogate(
    tmp_path: Path, capsys, option: str, text: str, mention: str
) -> None:
    """Undecodable argv bytes arrive as lone surrogates: one line naming the option."""
    code = main(["link", str(tmp_path), "--dictionary", "d.tsv", "--text", text,
                 "--mention", mention])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"error: {option} is not valid text: lone surrogate U+DCFF at position 1"
    )
    assert len(err.splitlines()) == 1


def test_link_input_with_a_lone_surrogate_names_file_and_line(
    tmp_path: Path, capsys
) -> None:
    r"""A `\ud800` JSON escape in line 1: file:1 and the field, not a TypeError."""
    inp = tmp_path / "q.jsonl"
    inp.write_text('{"text": "a fever", "mention": "fe\\ud800ver"}\n', encoding="utf-8")
    code = main(["link", str(tmp_path), "--dictionary", "d.tsv", "--input", str(inp)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("q.jsonl:1: 'mention' is not valid text: lone surrogate "
                        "U+D800 at position 2")  # fmt: skip


@pytest.mark.parametrize("option", ["--text", "--mention"])
def test_link_refuses_text_or_mention_beside_input(
    tmp_path: Path, capsys, option: str
) -> None:
    """`--input` with `--text` or `--mention`: refused, not one of them ignored."""
    inp = tmp_path / "q.jsonl"
    inp.write_text('{"text": "a fever", "mention": "fever"}\n', encoding="utf-8")
    code = main(["link", str(tmp_path), "--dictionary", "d.tsv", "--input", str(inp),
                 option, "fever"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"give --input or --text and --mention, not {option} too")


def test_a_failed_tensor_write_is_one_line_naming_the_model(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """The safetensors error of a full disk: one line, exit 1, no temporary left."""
    from safetensors import SafetensorError

    inp, dic = _mentions(tmp_path / "m.jsonl"), _dictionary(tmp_path / "d.tsv")
    assert _prepare(inp, dic, tmp_path / "t") == 0

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left")

    monkeypatch.setattr("kfacel.models.registry.save_file", full)
    code = main(["train", "--task", str(tmp_path / "t"), "--out",
                 str(tmp_path / "model"), "--epochs", "1", "--hidden", "8"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kfacel train: error: could not write {tmp_path / 'model'}: Error while "
        "serializing: I/O error: No space left"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tsv", "m.jsonl", "t"]


class _Encoder:
    """A stand-in sentence encoder: one-hot rows, and a log of what it did when."""

    key, dim = "stub", 2

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def encode(self, names, **kwargs):
        self.log.append("encode")
        return np.eye(len(names), self.dim, dtype=np.float32)


def test_unwritable_name_cache_is_said_before_encoding(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    """A cache directory under a file: one warning first, then the names, no cache."""
    from kfacel.retrieval import dense

    log: list[str] = []
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("KFACEL_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(dense.logger, "warning", lambda *a: log.append(a[0] % a[1:]))
    index = dense.NameIndex.build(_Encoder(log), ["alpha", "beta"])  # type: ignore[arg-type]
    assert log[1] == "encode"
    assert log[0].startswith(f"name-matrix cache {blocker / 'cache'} cannot be written")
    assert "$KFACEL_CACHE_DIR" in log[0]
    assert len(log) == 2
    np.testing.assert_array_equal(index.matrix, np.eye(2, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_cache_write_keeps_the_encoded_names(
    tmp_path: Path, monkeypatch
) -> None:
    """A full disk when the matrix is written: a warning, and the index is returned."""
    from kfacel.retrieval import dense

    def full(path, write):
        raise OSError(28, "No space left on device", str(path))

    log: list[str] = []
    monkeypatch.setattr(dense, "atomic_write", full)
    monkeypatch.setattr(dense.logger, "warning", lambda *a: log.append(a[0] % a[1:]))
    index = dense.NameIndex.build(_Encoder(log), ["alpha"], cache=tmp_path)  # type: ignore[arg-type]
    assert log[0] == "encode"
    assert log[1].startswith("name-matrix cache not written: [Errno 28] No space left")
    assert index.matrix.shape == (1, 2)


# --- outputs kfacel did not write, and a second writer ----------------------------------


def _not_reached(*args, **kwargs):
    raise AssertionError("the output should have been refused before any work")


def test_report_and_quickstart_refuse_a_directory_they_did_not_write(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """`report --out` / `quickstart --out` onto the user's directory: refused first."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n", encoding="utf-8")
    (mine / "results.json").write_text("{}\n", encoding="utf-8")
    before = _snapshot(tmp_path)
    monkeypatch.setattr("kfacel.experiments.report.write_report", _not_reached)
    monkeypatch.setattr("kfacel.demo.demo_tasks", _not_reached)
    run = tmp_path / "run"
    assert main(["report", str(run), "--out", str(mine), "--overwrite"]) == 2
    assert main(["report", str(run), "--out", str(run / "cells" / "x")]) == 2
    assert main(["quickstart", "--out", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "is not a kfacel report directory" in err[0]
    assert "overlaps RUN_DIR" in err[1]
    assert "is not a kfacel quickstart report directory" in err[2]
    assert len(err) == 3
    assert _snapshot(tmp_path) == before


class _Reached(Exception):
    """Raised where the work would start: the output checks passed."""


def _reached(*args, **kwargs):
    raise _Reached


def test_quickstart_replaces_its_own_default_report_and_nothing_else(
    tmp_path: Path, monkeypatch
) -> None:
    """No --out: an earlier quickstart's report is replaced, a user's directory is not."""
    from dataclasses import fields

    from kfacel.experiments.quickstart import QuickstartResult

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("kfacel.demo.demo_tasks", _reached)
    default = tmp_path / "quickstart-output"
    default.mkdir()
    earlier = {f.name: None for f in fields(QuickstartResult)}
    (default / "results.json").write_text(json.dumps(earlier), encoding="utf-8")
    with pytest.raises(_Reached):  # the check let the re-run through
        main(["quickstart"])
    (default / "notes.txt").write_text("mine\n", encoding="utf-8")
    assert main(["quickstart"]) == 2
    assert (default / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_figures_refuse_to_replace_a_file_that_is_no_figure(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """`figures --out D` where D holds a text file of a figure's name: refused first."""
    (tmp_path / "figure2_fisher.png").write_text("mine", encoding="utf-8")
    monkeypatch.setattr("kfacel.experiments.figures.plot_toy_gaussians", _not_reached)
    assert main(["figures", "--out", str(tmp_path), "--overwrite"]) == 2
    assert "is not a kfacel figure" in capsys.readouterr().err
    assert (tmp_path / "figure2_fisher.png").read_text(encoding="utf-8") == "mine"


def test_a_second_writer_of_a_model_or_task_is_refused(tmp_path: Path, capsys) -> None:
    """`consolidate` / `prepare` while another kfacel process writes there: one line."""
    model, task = tmp_path / "model", tmp_path / "task"
    inp, dic = _mentions(tmp_path / "m.jsonl"), _dictionary(tmp_path / "d.tsv")
    with write_lock(model, "train"), write_lock(task, "prepare"):
        assert main(["consolidate", str(model), "--task", str(task)]) == 2
        assert _prepare(inp, dic, task) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{model} is being written by kfacel train, pid {os.getpid()}" in err[0]
    assert f"{task} is being written by kfacel prepare" in err[1]
    assert len(err) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tsv", "m.jsonl"]


def test_experiment_refuses_a_run_directory_inside_a_task(
    tmp_path: Path, capsys
) -> None:
    """`experiment --out TASK/run`: refused before anything is read or written."""
    config = tmp_path / "c.toml"
    tasks = "".join(
        f'[[tasks]]\nname = "{t}"\npath = "{tmp_path / t}"\n' for t in "abc"
    )
    config.write_text(f'name = "c"\n{tasks}', encoding="utf-8")
    for out in (tmp_path / "a" / "run", tmp_path):
        assert main(["experiment", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "overlaps task" in err[0]
    assert "overlaps CONFIG" in err[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
