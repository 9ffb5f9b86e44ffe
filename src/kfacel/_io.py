"""Atomic file writes: the one way kfacel writes a file that a reader may see.

A file appears whole or not at all: the content goes to a hidden temporary sibling
(``.NAME.XXXX``) in the same directory, which is renamed over ``path`` once complete and
removed on every error path (KeyboardInterrupt included); a failed safetensors write is
re-raised as an ``OSError`` naming the file. The file gets the permissions
a plain ``open(path, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from safetensors import SafetensorError


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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_naming(path, exc)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, Unix line ends) to ``path`` atomically."""

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


def atomic_dir(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling directory, then rename it into place.

    The directory appears whole or not at all: an existing ``directory`` is moved
    aside (``.NAME.old-PID``) and removed only after the new one is in place, and put
    back if that rename fails; the temporary directory is removed on every error path.
    It gets the mode ``mkdir`` would give (``mkdtemp`` makes it 0700).

    Returns:
        ``directory`` as a ``Path``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))
        write(tmp)
        _swap_in(tmp, directory)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_naming(directory, exc)
    return directory


def _raise_naming(path: Path, exc: BaseException) -> NoReturn:
    """Re-raise ``exc``; a failed safetensors write as an ``OSError`` naming ``path``.

    safetensors reports a full disk or a file-size limit as its own ``SafetensorError``
    (not an ``OSError``) without the file's name.
    """
    if isinstance(exc, SafetensorError):
        raise OSError(f"could not write {path}: {exc}") from exc
    raise exc


def _swap_in(tmp: Path, directory: Path) -> None:
    """Rename ``tmp`` to ``directory``; an existing one is removed only after."""
    if not directory.exists() or not any(directory.iterdir()):
        os.replace(tmp, directory)
        return
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(old, directory)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_output_dir(
    out: str | Path,
    *,
    inputs: dict[str, list[str | Path]],
    own: Callable[[Path], bool],
    what: str,
    overwrite: bool = False,
) -> Path:
    """Refuse an output directory whose writing could lose what kfacel did not create.

    Checked before any work: ``out`` may not be, contain or lie inside an input; an
    existing non-empty ``out`` must be kfacel's own output of this kind (``own``) and is
    replaced only with ``overwrite``; its nearest existing ancestor must be writable.

    Args:
        out: the directory to write.
        inputs: the inputs, by the option that named them (e.g. ``{"--task": [...]}``).
        own: whether an existing directory is kfacel's own output of this kind.
        what: the kind, for messages (e.g. "model directory").
        overwrite: whether the user allowed replacing kfacel's own output.

    Returns:
        ``out`` resolved.

    Raises:
        ValueError: naming ``out`` and the reason.
    """
    target = Path(out).resolve()
    for option, paths in inputs.items():
        for p in paths:
            src = Path(p).resolve()
            if target == src or src in target.parents or target in src.parents:
                raise ValueError(
                    f"--out {out} overlaps {option} {p}: kfacel does not write over "
                    "or inside its inputs; choose another --out"
                )
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not own(target):
            raise ValueError(
                f"--out {out} exists and is not a kfacel {what}: kfacel replaces "
                "only its own output; choose a new or empty directory"
            )
        if not overwrite:
            raise ValueError(
                f"--out {out} is an existing {what}: pass --overwrite to replace it"
            )
    parent = next(p for p in [target, *target.parents] if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} is not writable")
    return target
