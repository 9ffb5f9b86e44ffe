"""Atomic writes, and the checks that keep them off what kfacel did not write.

A file appears whole or not at all: the content goes to a hidden temporary sibling
(``.NAME.tmp-PID-XXXXXXXX``, PID the writer's) in the same directory, which is renamed
over ``path`` once complete and removed on every error path (KeyboardInterrupt
included); a failed safetensors write is re-raised as an ``OSError`` naming the
file. The file gets the permissions a plain ``open(path, "w")`` would give
(``0o666`` less the umask), not ``mkstemp``'s 0600. A directory is written the same
way; an existing one is replaced only when the caller says what it must be
(``replace``), checked again right before the rename, and is moved aside
(``.NAME.old-PID``) until the new one is in place.

A writer killed on the way (``kill -9``) leaves its temporaries, or a directory moved
aside, behind; ``recover`` removes the temporaries of writers that no longer run and
puts a directory moved aside back when nothing took its place. Only names of this form
with a dead PID are touched.

``check_output_dir`` and ``check_output_file`` refuse, before any work, an output that
is, holds or lies in an input, and an existing output kfacel did not write.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from safetensors import SafetensorError

logger = logging.getLogger(__name__)

Inputs = Mapping[str, Sequence[str | Path]]
"""Input paths by the option (or argument) that named them, e.g. ``{"--task": [d]}``."""


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open`` or ``mkdir`` would give.

    >>> umask_mode(0o666) & ~0o777
    0
    """
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _temp_prefix(path: Path) -> str:
    """The name prefix of this process's temporaries for ``path``.

    >>> _temp_prefix(Path("m")).startswith(".m.tmp-")
    True
    """
    return f".{path.name}.tmp-{os.getpid()}-"


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
    recover(path)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
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


def atomic_dir(
    directory: str | Path,
    write: Callable[[Path], None],
    *,
    replace: Callable[[Path], bool] | None = None,
) -> Path:
    """Call ``write(tmp)`` on a temporary sibling directory, then rename it into place.

    The directory appears whole or not at all. Right before the rename, ``directory``
    must be absent or empty, or (with ``replace``) a directory ``replace`` accepts;
    that one is moved aside (``.NAME.old-PID``) and removed only after the new one is
    in place, and put back if that rename fails. The temporary directory is removed on
    every error path. It gets the mode ``mkdir`` would give (``mkdtemp`` makes 0700).

    Args:
        directory: the directory to write.
        write: fills the temporary directory it is given.
        replace: whether an existing non-empty ``directory`` may be replaced (e.g.
            "is kfacel's own model directory"); None: it may not.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: naming ``directory`` when something is there that may not be
            replaced; it is left as it is.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(directory), dir=directory.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))
        write(tmp)
        _swap_in(tmp, directory, replace)
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


def _swap_in(
    tmp: Path, directory: Path, replace: Callable[[Path], bool] | None
) -> None:
    """Rename ``tmp`` to ``directory``; an existing one only if ``replace`` accepts it."""
    if not directory.is_dir() or not any(directory.iterdir()):
        os.replace(tmp, directory)  # onto nothing or an empty directory: nothing lost
        return
    if replace is None or not replace(directory):
        raise ValueError(
            f"{directory} appeared or changed while kfacel was writing it: left as it "
            "is and nothing written; choose another output"
        )
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(old, directory)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (any user's).

    >>> pid_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


_LEFTOVER = re.compile(
    r"\.(?P<name>.+)\.(?:tmp-(?P<tmp>\d+)-[a-z0-9_]{8}|old-(?P<old>\d+))"
)
"""A kfacel temporary (``.NAME.tmp-PID-XXXXXXXX``) or a directory moved aside
(``.NAME.old-PID``)."""


def recover(path: str | Path) -> None:
    """Undo what killed kfacel writers left beside ``path``, in its directory.

    A temporary (``.NAME.tmp-PID-XXXXXXXX``) of a PID that no longer runs is removed,
    whatever output NAME it was for; a directory moved aside (``.NAME.old-PID``) by
    such a writer is put back when NAME is absent or empty (the swap stopped half-way),
    else removed (the new one is in place). Each is logged in one line; nothing else is
    touched, and entries of a running writer are left alone.
    """
    try:
        entries = list(Path(path).parent.glob(".*.*-*"))
    except OSError:
        return
    for entry in entries:
        found = _LEFTOVER.fullmatch(entry.name)
        if found is None or pid_alive(int(found["tmp"] or found["old"])):
            continue
        try:
            _undo(entry, entry.with_name(found["name"]), moved_aside=bool(found["old"]))
        except OSError:  # another process got there first
            continue


def _undo(entry: Path, target: Path, *, moved_aside: bool) -> None:
    """Put ``entry`` back as ``target`` (a swap cut short) or remove it; log one line."""
    if moved_aside and (not target.is_dir() or not any(target.iterdir())):
        os.replace(entry, target)
        logger.warning("%s: put back from %s (a writer was killed)", target, entry)
    elif entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
        logger.info("removed %s, left by a killed writer", entry)
    else:
        entry.unlink()
        logger.info("removed %s, left by a killed writer", entry)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters quoted.

    >>> glob_escape("a[1]*")
    'a[[]1[]][*]'
    """
    return re.sub(r"([*?\[\]])", r"[\1]", name)


def check_inputs_apart(
    target: Path, out: str | Path, inputs: Inputs, option: str
) -> None:
    """Refuse an output ``target`` that is, holds or lies in one of ``inputs``.

    Raises:
        ValueError: naming ``option``, ``out`` and the input.
    """
    for name, paths in inputs.items():
        for p in paths:
            src = Path(p).resolve()
            if target == src or src in target.parents or target in src.parents:
                raise ValueError(
                    f"{option} {out} overlaps {name} {p}: kfacel does not write over "
                    f"or inside its inputs; choose another {option}"
                )


def check_output_dir(
    out: str | Path,
    *,
    inputs: Inputs,
    own: Callable[[Path], bool],
    what: str,
    overwrite: bool = False,
    option: str = "--out",
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
        option: the option that named ``out``, for messages.

    Returns:
        ``out`` resolved.

    Raises:
        ValueError: naming ``out`` and the reason.
    """
    target = Path(out).resolve()
    check_inputs_apart(target, out, inputs, option)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{option} {out} is a file, not a directory")
    if target.is_dir() and any(target.iterdir()):
        ours = own(target)
        _check_replaceable(
            out, option, what, ours, overwrite, "a new or empty directory"
        )
    _check_writable(target, out, option)
    return target


def check_output_file(
    out: str | Path,
    *,
    inputs: Inputs,
    own: Callable[[Path], bool],
    what: str,
    overwrite: bool = False,
    option: str = "--output",
) -> Path:
    """Refuse an output file whose writing could lose what kfacel did not create.

    Checked before any work: ``out`` may not be or lie inside an input; an existing
    ``out`` must be kfacel's own output of this kind (``own``) and is replaced only
    with ``overwrite``; its nearest existing ancestor must be writable.

    Args:
        out: the file to write.
        inputs: the inputs, by the option that named them.
        own: whether an existing file is kfacel's own output of this kind.
        what: the kind, for messages (e.g. "evaluation file").
        overwrite: whether the user allowed replacing kfacel's own output.
        option: the option that named ``out``, for messages.

    Returns:
        ``out`` resolved.

    Raises:
        ValueError: naming ``out`` and the reason.
    """
    target = Path(out).resolve()
    check_inputs_apart(target, out, inputs, option)
    if target.is_dir():
        raise ValueError(f"{option} {out} is a directory, not a file")
    if target.exists():
        ours = target.is_file() and own(target)
        _check_replaceable(out, option, what, ours, overwrite, "another file")
    _check_writable(target, out, option)
    return target


def _check_replaceable(
    out: str | Path, option: str, what: str, ours: bool, overwrite: bool, instead: str
) -> None:
    """Refuse an existing output that is not kfacel's, or is and lacks ``--overwrite``."""
    if not ours:
        raise ValueError(
            f"{option} {out} exists and is not a kfacel {what}: kfacel replaces "
            f"only its own output; choose {instead}"
        )
    if not overwrite:
        raise ValueError(
            f"{option} {out} is an existing {what}: pass --overwrite to replace it"
        )


def _check_writable(target: Path, out: str | Path, option: str) -> None:
    """Refuse ``target`` when its nearest existing ancestor cannot be written."""
    parent = next(p for p in target.parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"{option} {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: {parent} is not writable")
