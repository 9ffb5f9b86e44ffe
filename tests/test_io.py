"""The atomic writers against plain ``open`` and against what others left or put there.

Same content and mode as ``open``, nothing left on error; a directory that appeared
meanwhile is never replaced; a killed writer's leftovers are cleaned or put back.
"""

import logging
import os
import stat
from pathlib import Path

import pytest

from kfacel._io import (
    atomic_dir,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_output_file,
    recover,
)
from tests._synth import dead_pid


def test_file_gets_the_mode_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x", encoding="utf-8")
        written = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644


def test_replaces_content_and_writes_json(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": [1, 2]}, sort_keys=True)
    assert path.read_text(encoding="utf-8") == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_leaves_old_file_and_no_temporary(tmp_path: Path, error: type) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old", encoding="utf-8")

    def fail(tmp: Path) -> None:
        tmp.write_text("half", encoding="utf-8")
        raise error

    with pytest.raises(error):
        atomic_write(path, fail)
    assert path.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and setrlimit")
def test_a_file_size_limit_is_an_os_error_naming_the_file(tmp_path: Path) -> None:
    """`ulimit -f` in a fork: safetensors' error as an OSError naming the file."""
    import resource
    import signal

    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "big.safetensors"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limit, write, report the error text, exit
        os.close(read)
        message = "no error"
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
            tensors = {"x": np.zeros(4096, dtype=np.float32)}
            atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        message = fh.read().decode()
    os.waitpid(pid, 0)
    assert message.startswith(f"OSError: could not write {path}: ")
    assert "File too large" in message
    assert list(tmp_path.iterdir()) == []


def fill(tmp: Path) -> None:
    (tmp / "weights").write_text("new", encoding="utf-8")


def test_a_directory_that_appeared_while_writing_is_left_as_it_is(tmp_path) -> None:
    model = tmp_path / "m"

    def write_while_someone_else_does(tmp: Path) -> None:
        fill(tmp)
        model.mkdir()
        (model / "theirs.txt").write_text("theirs", encoding="utf-8")

    with pytest.raises(ValueError, match="appeared or changed while kfacel"):
        atomic_dir(model, write_while_someone_else_does)
    assert sorted(p.name for p in model.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left


def test_an_existing_directory_is_replaced_only_when_replace_accepts_it(
    tmp_path,
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "weights").write_text("old", encoding="utf-8")
    with pytest.raises(ValueError, match="appeared or changed"):
        atomic_dir(model, fill, replace=lambda d: (d / "config.json").is_file())
    assert (model / "weights").read_text(encoding="utf-8") == "old"
    atomic_dir(model, fill, replace=lambda d: (d / "weights").is_file())
    assert (model / "weights").read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_temporaries_of_dead_writers_go_and_the_rest_stays(tmp_path) -> None:
    dead, live = dead_pid(), os.getpid()
    left = [
        tmp_path / f".m.tmp-{dead}-abcd_123",  # a killed writer's: removed
        tmp_path / f".n.tmp-{dead}-abcd_123",  # another output's killed writer: removed
        tmp_path / f".m.tmp-{live}-abcd_123",  # a running writer's: kept
        tmp_path / ".m.tmp-abcd_123",  # no PID (an older kfacel's): kept
        tmp_path / f".m.tmp-{dead}-mine",  # not a name kfacel makes: kept
        tmp_path / f".m.tmp-{dead}-abcd_123.bak",  # not a name kfacel makes: kept
    ]
    for d in left:
        d.mkdir()
        (d / "big.bin").write_bytes(b"x" * 10)
    (tmp_path / f".m.tmp-{dead}-file0001").write_text("half", encoding="utf-8")
    atomic_dir(tmp_path / "m", fill)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["m", *(d.name for d in left[2:])])


def test_another_outputs_model_moved_aside_by_a_killed_writer_is_put_back(
    tmp_path,
) -> None:
    """Recovery sees the whole directory: a write of m puts back n, stranded by a kill."""
    aside = tmp_path / f".n.old-{dead_pid()}"
    aside.mkdir()
    (aside / "weights").write_text("n's", encoding="utf-8")
    atomic_dir(tmp_path / "m", fill)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "n"]
    assert (tmp_path / "n" / "weights").read_text(encoding="utf-8") == "n's"


@pytest.mark.parametrize("new_in_place", [False, True])
def test_a_directory_moved_aside_by_a_killed_writer_is_put_back(
    tmp_path, caplog, new_in_place
) -> None:
    aside = tmp_path / f".m.old-{dead_pid()}"
    aside.mkdir()
    (aside / "weights").write_text("old", encoding="utf-8")
    if new_in_place:  # killed after the second rename: the old one is garbage
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "weights").write_text("new", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="kfacel._io"):
        recover(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    want = "new" if new_in_place else "old"
    assert (tmp_path / "m" / "weights").read_text(encoding="utf-8") == want
    assert len(caplog.records) == 1


def test_a_running_writers_directory_aside_is_not_touched(tmp_path) -> None:
    aside = tmp_path / f".m.old-{os.getpid()}"
    aside.mkdir()
    recover(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name]


def test_an_output_file_may_not_be_or_lie_in_an_input(tmp_path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    for out in (model / "model.safetensors", model / "new.json", model):
        with pytest.raises(ValueError, match=r"overlaps MODEL_DIR|is a directory"):
            check_output_file(
                out, inputs={"MODEL_DIR": [model]}, own=lambda p: True, what="x"
            )
    assert (model / "model.safetensors").read_bytes() == b"weights"
