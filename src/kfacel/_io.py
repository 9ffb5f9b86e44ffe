"""Atomic file writes: the one way kfacel writes a file that a reader may see.

A file appears whole or not at all: the content goes to a hidden temporary sibling
(``.NAME.XXXX``) in the same directory, which is renamed over ``path`` once complete and
removed on every error path (KeyboardInterrupt included). The file gets the permissions
a plain ``open(path, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open`` or ``mkdir`` would give.

    >>> umask_mode(0o666) & ~0o777
    0
    """
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it to ``path``.

    Args:
        path: the file to create or replace; its parent directory is created.
        write: writes the whole content to the path it is given.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """Write ``obj`` as JSON plus a final newline to ``path`` atomically.

    Args:
        path: the file.
        obj: a JSON-ready value.
        **dumps: ``json.dumps`` options (default ``indent=2``).
    """
    return atomic_write_text(path, json.dumps(obj, **{"indent": 2, **dumps}) + "\n")
