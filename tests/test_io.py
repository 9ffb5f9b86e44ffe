"""The atomic writer against plain ``open``: same content and mode, nothing left on error."""

import os
import stat
from pathlib import Path

import pytest

from kfacel._io import atomic_write, atomic_write_json, atomic_write_text


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
