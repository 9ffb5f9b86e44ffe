"""Ontologies a linker learned: their stored concepts, their records, and their union.

A task directory and a model directory keep the dictionary their task was built with as
an *ontology file*: gzip-compressed JSON lines, a header
``{"format": "kfacel-ontology/1", "sha256": …, "size": …}`` and then one concept a line,
``{"id", "names", "type", "alt_ids"}``, in dictionary order. Reading it back gives the
same ``Concept``s, so the same ``dictionary_digest`` and the same candidate ranks; the
header's digest is checked on every read (a damaged file is refused, naming it). The
bytes are deterministic (gzip's time stamp is 0): equal dictionaries, equal files.

An ``Ontology`` records one of them in a model's ``config.json``: its name, digest,
size, the tasks trained on it, the dictionary file it came from, and where its concepts
are (``None``: recorded by digest alone, for a task prepared before tasks kept their
dictionary). ``union`` merges several for one index: concept ids are kept as the
dictionaries spell them, and each concept remembers its ontology; an id that an earlier
ontology already uses is indexed as ``NAME:id`` and reported as ``id`` with its
ontology, so ids never clash and results never show a made-up id.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kfacel.data.records import Concept
from kfacel.retrieval.base import dictionary_digest

FORMAT = "kfacel-ontology/1"
SUFFIX = ".jsonl.gz"


def ontology_bytes(concepts: Sequence[Concept]) -> bytes:
    """The ontology file of ``concepts`` (deterministic gzip of JSON lines).

    >>> c = Concept("D1", ("fever", "pyrexia"))
    >>> ontology_concepts(ontology_bytes([c]), "x") == [c]
    True
    """
    head = {"format": FORMAT, "sha256": dictionary_digest(concepts)}
    lines = [json.dumps(head | {"size": len(concepts)}, sort_keys=True)]
    for c in concepts:
        obj = {"id": c.id, "names": list(c.names), "type": c.semantic_type}
        lines.append(json.dumps(obj | {"alt_ids": list(c.alt_ids)}, ensure_ascii=False))
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as fh:
        fh.write(raw)
    return buffer.getvalue()


def write_ontology(path: Path, concepts: Sequence[Concept]) -> None:
    """Write ``concepts`` as an ontology file at ``path``.

    The caller writes into a directory assembled atomically (``kfacel._io``).
    """
    path.write_bytes(ontology_bytes(concepts))


def read_ontology(path: Path | str, *, sha256: str | None = None) -> list[Concept]:
    """The concepts of the ontology file ``path``, checked against its digest.

    Raises:
        ValueError: naming the file when it is not an ontology file, or its concepts
            do not hash to its header's digest (or to ``sha256``, when given).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return ontology_concepts(data, str(path), sha256=sha256)


def ontology_concepts(
    data: bytes, where: str, *, sha256: str | None = None
) -> list[Concept]:
    """The concepts of an ontology file's bytes (``where`` names it in errors)."""
    try:
        lines = gzip.decompress(data).decode("utf-8").splitlines()
        head = json.loads(lines[0])
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        concepts = [_concept(json.loads(line)) for line in lines[1:] if line]
    except (OSError, EOFError, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"{where}: not a {FORMAT} file ({exc})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    digest = dictionary_digest(concepts)
    for expected in (head.get("sha256"), sha256):
        if expected is not None and digest != expected:
            raise ValueError(
                f"{where}: its concepts hash to sha256 {digest[:12]}…, not the "
                f"recorded {str(expected)[:12]}… (the file is damaged)"
            )
    return concepts


def _concept(obj: dict[str, Any]) -> Concept:
    names = tuple(str(n) for n in obj["names"])
    if not names:
        raise ValueError(f"concept {obj['id']!r} has no name")
    kind = obj.get("type")
    alt = tuple(str(a) for a in obj.get("alt_ids", ()))
    return Concept(str(obj["id"]), names, None if kind is None else str(kind), alt)


@dataclass(frozen=True)
class Ontology:
    """One ontology a model learned (a task's dictionary), as ``config.json`` records it.

    Attributes:
        name: how ``link --ontology`` and results name it.
        sha256: ``dictionary_digest`` of its concepts.
        size: how many concepts.
        tasks: the tasks trained on it, in training order.
        source: the dictionary file the task was prepared from, as recorded.
        file: its ontology file; None when only its digest is known.
        loaded: its concepts when they are held in memory and not (yet) in ``file``.
    """

    name: str
    sha256: str
    size: int
    tasks: tuple[str, ...] = ()
    source: str | None = None
    file: Path | None = field(default=None, compare=False)
    loaded: tuple[Concept, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def stored(self) -> bool:
        """Whether its concepts are at hand (in a file or in memory)."""
        return self.loaded is not None or self.file is not None

    def concepts(self) -> list[Concept]:
        """Its concepts, in dictionary order.

        Raises:
            ValueError: when they are not stored (a reference only), or the file is bad.
        """
        if self.loaded is not None:
            return list(self.loaded)
        if self.file is None:
            raise ValueError(
                f"ontology {self.name!r} is recorded by its digest only (its task was "
                "prepared before tasks kept their dictionary): give its dictionary file"
            )
        return read_ontology(self.file, sha256=self.sha256)

    def to_json(self, file: str | None) -> dict[str, Any]:
        """The ``config.json`` record; ``file`` is its path in the model directory."""
        out: dict[str, Any] = {"name": self.name, "sha256": self.sha256}
        out |= {"size": self.size, "tasks": list(self.tasks), "source": self.source}
        return out | {"file": file}

    @classmethod
    def from_json(cls, obj: dict[str, Any], directory: Path) -> Ontology:
        """A record of ``config.json``; its file relative to the model ``directory``."""
        file = obj.get("file")
        return cls(
            name=str(obj["name"]),
            sha256=str(obj["sha256"]),
            size=int(obj["size"]),
            tasks=tuple(str(t) for t in obj.get("tasks", ())),
            source=obj.get("source"),
            file=directory / file if file else None,
        )


def ontology_name(source: str | None, fallback: str) -> str:
    """A file-safe name from a dictionary path's stem (``fallback`` without one).

    >>> ontology_name("data/CTD_diseases.tsv.gz", "ncbi")
    'CTD_diseases'
    >>> ontology_name(None, "ncbi")
    'ncbi'
    """
    stem = Path(source).name if source else ""
    for suffix in (".gz", ".tsv", ".txt", ".csv", ".jsonl"):
        stem = stem.removesuffix(suffix)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._")
    return safe or re.sub(r"[^A-Za-z0-9_.-]+", "_", fallback).strip("._") or "ontology"


def learn(known: Sequence[Ontology], new: Ontology) -> tuple[Ontology, ...]:
    """``known`` with ``new`` added, merged into an equal one (same digest) if any.

    Otherwise ``new`` is appended under a name no other ontology has (its own, else
    ``name-task``, then a number).
    """
    out = list(known)
    for i, old in enumerate(out):
        if old.sha256 == new.sha256:
            tasks = (*old.tasks, *(t for t in new.tasks if t not in old.tasks))
            keep = old if old.stored or not new.stored else new
            out[i] = replace(keep, name=old.name, tasks=tasks)
            return tuple(out)
    names = {o.name for o in out}
    name = new.name
    if name in names:
        name = f"{name}-{new.tasks[0]}" if new.tasks else name
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
    return (*out, replace(new, name=name))


@dataclass(frozen=True)
class Union:
    """Concepts of several ontologies in one dictionary, each knowing its ontology."""

    concepts: tuple[Concept, ...]
    origin: dict[str, tuple[str, str]]
    """Indexed id → (ontology name, id as the dictionary spells it)."""

    def source(self, indexed_id: str) -> tuple[str, str]:
        """``(ontology, id)`` of a concept of the union."""
        return self.origin[indexed_id]


def union(named: Sequence[tuple[str, Sequence[Concept]]]) -> Union:
    """One dictionary of the ontologies ``named``, in order, ids kept where they can be.

    A concept whose id an earlier concept already uses (as id or alternative id) is
    indexed as ``ONTOLOGY:id``; alternative ids already taken are dropped.

    >>> u = union([("A", [Concept("1", ("x",))]), ("B", [Concept("1", ("y",))])])
    >>> [c.id for c in u.concepts], u.source("B:1")
    (['1', 'B:1'], ('B', '1'))
    """
    taken: set[str] = set()
    concepts: list[Concept] = []
    origin: dict[str, tuple[str, str]] = {}
    for name, members in named:
        for c in members:
            ident = c.id if c.id not in taken else f"{name}:{c.id}"
            alt = tuple(a for a in c.alt_ids if a not in taken and a != ident)
            taken.update((ident, *alt))
            concepts.append(replace(c, id=ident, alt_ids=alt))
            origin[ident] = (name, c.id)
    return Union(tuple(concepts), origin)
