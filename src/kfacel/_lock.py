"""Write locks: one kfacel process writes a model, task or run directory at a time.

``write_lock(directory, what)`` holds an advisory ``flock`` on the sibling file
``.NAME.lock`` (beside the directory, not in it: a directory replaced by a rename keeps
its lock, and the lock never shows in the directory's own checks or contents). The file
names its holder (``what``, PID, start time) for the message a second writer gets; the
holder removes it when done. The operating system releases the lock of a process that
dies, so a lock file left by a killed writer is stale and simply taken over. Holding
the lock, the writer first puts right what a killed writer left (``_io.recover``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from kfacel._io import recover, umask_mode


def lock_file(directory: str | Path) -> Path:
    """The lock file of ``directory``: ``.NAME.lock`` beside it.

    >>> lock_file("runs/a").name
    '.a.lock'
    """
    path = Path(directory).resolve()
    if not path.name:
        raise ValueError(f"{directory}: cannot lock the root directory")
    return path.with_name(f".{path.name}.lock")


@contextmanager
def write_lock(directory: str | Path, what: str) -> Iterator[Path]:
    """Hold the write lock of ``directory`` for the ``with`` block.

    Args:
        directory: the directory about to be written (it need not exist yet; its
            parent is created).
        what: what the holder does, for a second writer's message (e.g. "train").

    Yields:
        The lock file.

    Raises:
        ValueError: in one line, when another process holds the lock.
    """
    lock = lock_file(directory)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, directory)
    try:
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"{what}, pid {os.getpid()}, started {started}\n".encode())
        recover(Path(directory).resolve())
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # still held: no one can take the removed file
        os.close(fd)


def _acquire(lock: Path, directory: str | Path) -> int:
    """An open descriptor of ``lock`` holding its exclusive ``flock``.

    Raises:
        ValueError: naming ``directory``, the holder and ``lock`` when it is held.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, umask_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ValueError(
                f"{directory} is being written by kfacel "
                f"{holder or 'in another process'}; wait for it, or remove {lock} "
                "if no such process runs"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the last holder removed this file meanwhile: take the new one
