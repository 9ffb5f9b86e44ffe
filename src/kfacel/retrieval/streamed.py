"""The name matrix on disk: embedded in chunks into a memory-mapped ``.npy``, resumably.

A dictionary of millions of names (UMLS holds about 3M English ones) has a name matrix
of gigabytes (3M × 384 float32: 4.6 GB) that takes hours to embed on a few cores. From
``IndexSettings.exact_below`` names on (``retrieval/ann.py``), ``NameIndex.build``
therefore keeps it in the cache directory instead of in memory:

- ``names-KEY.partial.npy``: the matrix being embedded, ``CHUNK`` names at a time in
  dictionary order, each chunk flushed to disk; ``names-KEY.partial.json`` records how
  many rows are done, so a build that was killed resumes where it stopped;
- ``names-KEY.npy`` and its sidecar ``names-KEY.json``: the finished matrix (float32,
  unit rows) and its SHA-256, checked before the matrix is memory-mapped for reading.
  One that fails the check is embedded again, with one warning.

One process embeds a dictionary at a time: a second one that finds the partial entry's
write lock held (``kfacel._lock``) is refused in one line, naming the holder.

``KEY`` is the same key the in-memory cache uses (the encoder's bytes and the names'
text), so no entry is read for other names or another encoder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from kfacel._io import atomic_write_json
from kfacel._lock import write_lock
from kfacel._progress import with_progress
from kfacel.retrieval.ann import file_sha256

logger = logging.getLogger(__name__)

_FORMAT = "kfacel-name-matrix/1"
CHUNK = 16384
"""Names embedded and flushed to disk at a time (what a killed build may lose)."""


class TextEncoder(Protocol):
    """What the streamed matrix needs of an encoder (``dense.SentenceEncoder``)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit rows ``[len(texts), dim]``."""
        ...


def matrix_file(directory: Path, key: str) -> Path:
    """The finished matrix of names keyed ``key`` in the cache ``directory``."""
    return directory / f"names-{key[:32]}.npy"


def streamed_matrix(
    encoder: TextEncoder,
    names: Sequence[str],
    key: str,
    directory: Path,
    *,
    progress: bool = False,
) -> np.ndarray:
    """The name matrix ``[names, dim]``, memory-mapped read-only from ``directory``.

    Read back when a finished entry passes its checks; else embedded into the partial
    entry (resuming one of the same key) and finished.

    Args:
        encoder: the sentence encoder (``dim``, ``encode``).
        names: the dictionary's names, in index order.
        key: the names' and encoder's cache key (``dense.names_key``).
        directory: a writable cache directory.
        progress: a progress bar over the chunks still to embed.
    """
    file = matrix_file(directory, key)
    shape = (len(names), encoder.dim)
    if file.is_file():
        found = _read(file, key, shape)
        if found is not None:
            return found
    partial = file.with_name(f"{file.stem}.partial.npy")
    # a second process is refused, not mixed into the same partial entry
    with write_lock(partial, "embed names"):
        _embed(encoder, names, key, partial, progress)
        meta = {"format": _FORMAT, "key": key, "shape": list(shape)}
        sidecar = file.with_suffix(".json")
        atomic_write_json(sidecar, meta | {"sha256": file_sha256(partial)})
        os.replace(partial, file)
        partial.with_suffix(".json").unlink(missing_ok=True)
    return np.load(file, mmap_mode="r")


def _embed(
    encoder: TextEncoder,
    names: Sequence[str],
    key: str,
    partial: Path,
    progress: bool,
) -> None:
    """Embed the names not yet in ``partial``, a chunk at a time, counting them."""
    state = partial.with_suffix(".json")
    out, done = _resume(partial, state, key, (len(names), encoder.dim))
    starts = range(done, len(names), CHUNK)
    for lo in with_progress(starts, enabled=progress, desc="embed names"):
        hi = min(lo + CHUNK, len(names))
        out[lo:hi] = encoder.encode(names[lo:hi])
        out.flush()
        atomic_write_json(state, {"format": _FORMAT, "key": key, "done": hi})
    del out


def _resume(
    partial: Path, state: Path, key: str, shape: tuple[int, int]
) -> tuple[np.memmap, int]:
    """The partial matrix and its rows done: the one on disk if it fits, else a new one."""
    try:
        done = json.loads(state.read_text(encoding="utf-8"))
        out = np.lib.format.open_memmap(partial, mode="r+")
        fits = done.get("key") == key and out.shape == shape and out.dtype == np.float32
        rows = int(done.get("done", -1))
        if fits and 0 <= rows <= shape[0]:
            logger.info("resuming the name matrix %s at row %d", partial, rows)
            return out, rows
        del out
    except (OSError, ValueError, AttributeError):
        pass  # nothing to resume, or not ours to trust: start over
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
    return out, 0


def _read(file: Path, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The finished matrix in ``file``, memory-mapped, or None, with a warning."""
    try:
        meta = json.loads(file.with_suffix(".json").read_text(encoding="utf-8"))
        matrix = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as exc:
        problem = f"cannot be read ({type(exc).__name__})"
    else:
        if meta.get("format") != _FORMAT or meta.get("key") != key:
            problem = "was written for other names or another encoder"
        elif matrix.shape != shape or matrix.dtype != np.float32:
            problem = f"holds {matrix.shape} {matrix.dtype}, not {shape} float32"
        elif meta.get("sha256") != file_sha256(file):
            problem = "does not match its digest (damaged)"
        else:
            return matrix
    logger.warning("dense cache entry %s %s; rebuilding it", file, problem)
    return None
