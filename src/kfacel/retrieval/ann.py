"""The dense channel's search index: exact below a dictionary size, HNSW above.

Two kinds (:class:`IndexKind`), chosen by the number of names (:func:`choose_kind`):

- ``exact``: the similarity of a batch of mentions to every name is one matrix product
  (``dense.NameIndex.scores``), as it always was; below ``exact_below`` names (default
  one million) this is the kind, and results are the exact search's to the bit.
- ``hnsw``: a hierarchical navigable small-world graph over the unit name vectors,
  searched by inner product (Malkov and Yashunin, "Efficient and robust approximate
  nearest neighbor search using Hierarchical Navigable Small World graphs", IEEE TPAMI
  2020; faiss's ``IndexHNSWFlat``). A query returns its ``depth`` nearest names; every
  other name scores 0 for it, which the channels read as "no evidence", as they read a
  non-positive cosine.

``$KFACEL_DENSE_INDEX`` (``auto``, ``exact`` or ``hnsw``) forces a kind for ``prepare``
and ``link`` (``IndexSettings.from_env``); ``exact`` at any size searches the name
matrix exactly (memory-mapped from disk above ``exact_below``). The TF-IDF channel
follows the same rule: exact below ``exact_below`` names or where ``exact`` is forced,
impact-ordered postings otherwise (``retrieval/tfidf.py``).

An HNSW graph takes minutes to hours to build, so it is cached beside the name matrix
(``ann-KEY-hnsw-M32-efc40.faiss``, faiss's own serialization: vectors and graph
arrays, no code). It is written atomically (``kfacel._io.atomic_write``), and a sidecar
``.json`` written after it records the kind, its parameters, the names' key and count
and the file's SHA-256; an index whose sidecar is missing or differs, or whose bytes
fail the digest, is never handed to faiss's reader: it is rebuilt, with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from kfacel._io import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

_FORMAT = "kfacel-ann-index/1"
_ADD_ROWS = 1 << 16
"""Rows of the name matrix added to an index at a time (a memory-mapped matrix is read
in such slices, so only the index itself is held in memory)."""
ENV = "KFACEL_DENSE_INDEX"
"""The environment variable that forces an index kind (``auto``, ``exact``, ``hnsw``)."""


class IndexKind(StrEnum):
    """How the dense channel searches its name matrix."""

    AUTO = "auto"
    EXACT = "exact"
    HNSW = "hnsw"


@dataclass(frozen=True)
class IndexSettings:
    """The size rule and the approximate index's parameters.

    Attributes:
        kind: ``auto`` (by size), or a forced kind.
        exact_below: dictionaries with fewer names are searched exactly with the name
            matrix in memory; from this size on, the matrix is streamed to disk and
            ``auto`` builds an HNSW index.
        hnsw_m: graph neighbours per node (faiss's ``M``).
        ef_construction: candidate list length while building.
        ef_search: candidate list length while searching (raised to ``depth``).
        depth: names an approximate search returns per query (the dense channel's
            HNSW graph); concepts per query in the score matrices of impact-ordered
            TF-IDF.
    """

    kind: IndexKind = IndexKind.AUTO
    exact_below: int = 1_000_000
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 256
    depth: int = 256

    @classmethod
    def from_env(cls) -> IndexSettings:
        """The defaults, with the kind ``$KFACEL_DENSE_INDEX`` names (if set).

        Raises:
            ValueError: naming the variable, for a value that is not a kind.
        """
        value = os.environ.get(ENV, "").strip().lower()
        if not value:
            return cls()
        try:
            return cls(kind=IndexKind(value))
        except ValueError:
            kinds = ", ".join(k.value for k in IndexKind)
            raise ValueError(f"${ENV}={value!r}: choose one of {kinds}") from None

    def params(self) -> dict[str, int]:
        """The build parameters of an HNSW index (what its cache file is keyed by)."""
        return {"M": self.hnsw_m, "efConstruction": self.ef_construction}


def choose_kind(names: int, settings: IndexSettings) -> IndexKind:
    """The index kind for a dictionary of ``names`` names: forced, or by size.

    >>> choose_kind(76_000, IndexSettings()), choose_kind(3_000_000, IndexSettings())
    (<IndexKind.EXACT: 'exact'>, <IndexKind.HNSW: 'hnsw'>)
    >>> choose_kind(3_000_000, IndexSettings(kind=IndexKind.EXACT))
    <IndexKind.EXACT: 'exact'>
    """
    if settings.kind is not IndexKind.AUTO:
        return settings.kind
    return IndexKind.HNSW if names >= settings.exact_below else IndexKind.EXACT


class HnswIndex:
    """An HNSW graph over unit name vectors, searched by inner product.

    Attributes:
        index: the faiss index (``IndexHNSWFlat``, inner product).
        settings: its parameters (``ef_search`` and ``depth`` apply when searching).
    """

    def __init__(self, index: Any, settings: IndexSettings) -> None:
        self.index = index
        self.settings = settings
        self.index.hnsw.efSearch = max(settings.ef_search, settings.depth)

    @classmethod
    def build(cls, matrix: np.ndarray, settings: IndexSettings) -> HnswIndex:
        """The graph of ``matrix`` ``[names, dim]`` (unit rows), added in slices."""
        import faiss

        index = faiss.IndexHNSWFlat(
            matrix.shape[1], settings.hnsw_m, faiss.METRIC_INNER_PRODUCT
        )
        index.hnsw.efConstruction = settings.ef_construction
        for lo in range(0, matrix.shape[0], _ADD_ROWS):
            index.add(np.ascontiguousarray(matrix[lo : lo + _ADD_ROWS], np.float32))
        return cls(index, settings)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, names)``, each ``[b, depth]``: each query's nearest names.

        A query with fewer than ``depth`` names found has ``-1`` in ``names`` there.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(self.settings.depth, self.index.ntotal)
        return self.index.search(queries, k)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Scores ``[b, names]``: the cosine of each query's nearest names, else 0."""
        found_scores, found = self.search(queries)
        out = np.zeros((len(queries), self.index.ntotal), dtype=np.float32)
        rows, cols = np.nonzero(found >= 0)
        out[rows, found[rows, cols]] = found_scores[rows, cols]
        return out

    def save(self, file: Path, key: str) -> None:
        """Write the index to ``file`` atomically, then its sidecar with the digest."""
        import faiss

        def write(tmp: Path) -> None:
            faiss.write_index(self.index, str(tmp))

        atomic_write(file, write)
        atomic_write_json(_sidecar(file), self._meta(key, file_sha256(file)))

    @classmethod
    def load(
        cls, file: Path, key: str, names: int, settings: IndexSettings
    ) -> HnswIndex | None:
        """The cached index in ``file``, or None, with a warning, to rebuild it.

        Its sidecar must record this format, ``key``, size and parameters, and the
        file's SHA-256 must equal the recorded one before faiss reads a byte of it.
        """
        import faiss

        if not file.is_file():
            return None  # not built yet: nothing to warn about
        problem = _refusal(file, cls._expected(key, names, settings))
        if problem is None:
            try:
                index = faiss.read_index(str(file))
            except Exception as exc:  # any damage the digest missed: rebuilt
                problem = f"cannot be read ({type(exc).__name__})"
            else:
                if index.ntotal == names:
                    return cls(index, settings)
                problem = f"holds {index.ntotal} names, not {names}"
        logger.warning("dense index %s %s; rebuilding it", file, problem)
        return None

    def _meta(self, key: str, sha256: str) -> dict[str, Any]:
        meta = self._expected(key, self.index.ntotal, self.settings)
        return {**meta, "dim": int(self.index.d), "sha256": sha256}

    @staticmethod
    def _expected(key: str, names: int, settings: IndexSettings) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "kind": IndexKind.HNSW.value,
            "params": settings.params(),
            "key": key,
            "names": names,
        }


def index_file(directory: Path, key: str, settings: IndexSettings) -> Path:
    """Where the HNSW index of names keyed ``key`` is cached, by its parameters."""
    p = settings.params()
    return directory / f"ann-{key[:32]}-hnsw-M{p['M']}-efc{p['efConstruction']}.faiss"


def _sidecar(file: Path) -> Path:
    return file.with_suffix(".json")


def _refusal(file: Path, expected: dict[str, Any]) -> str | None:
    """Why the cached ``file`` may not be read (None: it may)."""
    try:
        meta = json.loads(_sidecar(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"has no readable sidecar ({type(exc).__name__})"
    if not isinstance(meta, dict):
        return "has a damaged sidecar"
    for field, want in expected.items():
        if meta.get(field) != want:
            return f"was written with {field} {meta.get(field)!r}, not {want!r}"
    if meta.get("sha256") != file_sha256(file):
        return "does not match its digest (damaged)"
    return None


def file_sha256(file: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file's bytes, read in chunks (indexes run to gigabytes)."""
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
