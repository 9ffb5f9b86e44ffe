"""The write lock against a second writer, a dead holder and a directory moved aside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kfacel._lock import lock_file, write_lock
from tests._synth import dead_pid


def test_a_second_writer_is_refused_naming_the_holder(tmp_path) -> None:
    model = tmp_path / "m"
    with write_lock(model, "train") as lock:
        assert lock == tmp_path / ".m.lock"  # beside the directory, not in it
        assert not model.exists()
        with (
            pytest.raises(ValueError, match="being written") as err,
            write_lock(model, "consolidate"),
        ):
            pass
    message = str(err.value)
    assert f"{model} is being written by kfacel train, pid {os.getpid()}" in message
    assert str(lock) in message
    assert "\n" not in message
    assert not lock.exists()  # removed by its holder
    with write_lock(model, "train"):  # free again
        pass


def test_a_lock_file_left_by_a_dead_holder_is_taken_over(tmp_path) -> None:
    model = tmp_path / "m"
    lock = lock_file(model)
    lock.write_text(f"train, pid {dead_pid()}, started then\n", encoding="utf-8")
    with write_lock(model, "consolidate"):
        assert "consolidate" in lock.read_text(encoding="utf-8")
    assert not lock.exists()


def test_taking_the_lock_puts_back_a_directory_moved_aside(tmp_path: Path) -> None:
    aside = tmp_path / f".m.old-{dead_pid()}"
    aside.mkdir()
    (aside / "config.json").write_text("{}", encoding="utf-8")
    with write_lock(tmp_path / "m", "consolidate"):
        assert (tmp_path / "m" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
