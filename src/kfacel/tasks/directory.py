"""Task directories: the files a task is, written at once and read back.

A task directory holds ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (one
``LinkingExample.to_json()`` a line, keys sorted, UTF-8) and ``task.json`` (name,
sources, counts, candidate method, C, context width, seed, what was skipped and why,
and the generator's recall@k and accuracy@1 per split); with a retrieval method also
``aliases.json`` (the training alias table), and with a fine-tuned retriever its
checkpoint ``retriever/`` and ``retriever_groups.jsonl``. ``dictionary.jsonl.gz`` is the
dictionary the candidates were drawn from (``retrieval.ontology``), which ``train`` keeps
in the model directory so that ``link`` needs no ``--dictionary``. ``tasks.prepare`` builds the
queries; this module writes and reads the files.

The directory is assembled in a hidden temporary sibling (``.NAME.XXXX``, removed on
every error path) and renamed into place at once; equal inputs give byte-identical
files. Only an empty directory or a task directory (``task.json`` of format
``kfacel-task/…`` and nothing but the task files) is ever replaced:
:func:`check_task_out` refuses any other existing directory, and an output that holds
one of the inputs, before any work is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfacel._io import atomic_dir
from kfacel.data.aliases import AliasTable
from kfacel.data.readers.lines import read_text, text_lines
from kfacel.data.records import Concept, LinkingExample
from kfacel.retrieval.dense import RETRIEVER_STATES, SentenceEncoder
from kfacel.retrieval.finetune import RetrieverSettings
from kfacel.retrieval.ontology import write_ontology

SPLITS = ("train", "dev", "test")
FORMAT = "kfacel-task/1"
ALIASES_FILE = "aliases.json"
"""The training split's alias table, written for retrieval with the alias channel."""
RETRIEVER_DIR = "retriever"
"""The fine-tuned dense retriever's checkpoint, when the task was built with one."""
RETRIEVER_GROUPS_FILE = "retriever_groups.jsonl"
"""The synonym groups the retriever was fine-tuned on (dictionary names and training
mentions, one JSON list a line): what ``kfacel consolidate`` reads for its Fisher."""
DICTIONARY_FILE = "dictionary.jsonl.gz"
"""The task's dictionary as an ontology file (``retrieval.ontology``)."""
TASK_FILES = (
    "train.jsonl",
    "dev.jsonl",
    "test.jsonl",
    "task.json",
    ALIASES_FILE,
    RETRIEVER_DIR,
    RETRIEVER_GROUPS_FILE,
    DICTIONARY_FILE,
)


@dataclass(frozen=True)
class RetrieverTuning:
    """A task's fine-tuned retriever: the encoder, its groups, where it started."""

    encoder: SentenceEncoder
    groups: Sequence[tuple[str, ...]]
    start: Path | None = None
    """The checkpoint it started from; its ``consolidation/`` states travel along."""

    def write(self, task_dir: Path) -> None:
        """``retriever/`` (with the start's states) and the groups file."""
        self.encoder.save(task_dir / RETRIEVER_DIR)
        states = self.start / RETRIEVER_STATES if self.start is not None else None
        if states is not None and states.is_dir():
            shutil.copytree(states, task_dir / RETRIEVER_DIR / RETRIEVER_STATES)
        if self.groups:  # none: a given retriever on a task without synonyms
            lines = (
                json.dumps(list(g), ensure_ascii=False) + "\n" for g in self.groups
            )
            _write(task_dir / RETRIEVER_GROUPS_FILE, "".join(lines))


@dataclass(frozen=True)
class Task:
    """A loaded task directory: its name, metadata and the queries of each split."""

    name: str
    path: Path
    train: list[LinkingExample] = field(repr=False)
    dev: list[LinkingExample] = field(repr=False)
    test: list[LinkingExample] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    aliases: AliasTable | None = field(default=None, repr=False, compare=False)
    """The training links retrieval's alias channel reads (``aliases.json``)."""
    retriever: Path | None = field(default=None, repr=False, compare=False)
    """The fine-tuned dense retriever's checkpoint directory, if the task has one."""
    dictionary: Path | None = field(default=None, repr=False, compare=False)
    """Its dictionary's ontology file (``DICTIONARY_FILE``); None for a task prepared
    without one (an older kfacel, or by hand)."""

    def split(self, name: str) -> list[LinkingExample]:
        """The queries of split ``name`` (``train``, ``dev`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose from {SPLITS}")
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def retriever_groups(task: Task) -> list[tuple[str, ...]]:
    """The synonym groups a task's retriever was fine-tuned on (``tasks.prepare.prepare_task``).

    Raises:
        FileNotFoundError: the task was built without a fine-tuned retriever.
        ValueError: naming the file and line of a malformed group.
    """
    path = task.path / RETRIEVER_GROUPS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; the task was built without a fine-tuned retriever "
            "(kfacel prepare --retriever-epochs)"
        )
    groups = []
    for lineno, raw in text_lines(path):
        try:
            group = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
        if not (isinstance(group, list) and len(group) >= 2):
            raise ValueError(f"{path}:{lineno}: expected a list of two texts or more")
        groups.append(tuple(str(t) for t in group))
    return groups


def recorded_settings(task: Task) -> RetrieverSettings:
    """The batching of ``task``'s retriever fine-tuning, as ``task.json`` records it.

    Concepts per batch, temperature and seed (what ``pair_steps`` draws batches by);
    a key the task lacks keeps ``RetrieverSettings``' default.
    """
    recorded = task.info.get("candidates", {}).get("retriever", {})
    keys = ("batch_concepts", "temperature", "seed")
    return RetrieverSettings(**{k: recorded[k] for k in keys if k in recorded})


RANKER_READS = "retrieval_text"
"""``task.json``'s ``candidates.ranker_reads``: a query's mention is written as retrieval
read it (``retrieval.abbreviations.retrieval_text``: an abbreviation defined in its
document as its definition), so the ranker and ``kfacel link`` read what retrieval read.
Tasks without the key (older ones) hold the mention as written."""


def ranker_reads_retrieval_text(candidates: Mapping[str, Any]) -> bool:
    """Whether a task's (or model's) ``candidates`` settings hold mentions as retrieved."""
    return candidates.get("ranker_reads") == RANKER_READS


def is_task_dir(path: Path | str) -> bool:
    """Whether ``path`` is a directory with a ``task.json`` written by kfacel."""
    meta = Path(path) / "task.json"
    try:
        info = json.loads(read_text(meta))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and str(info.get("format", "")).startswith(
        "kfacel-task/"
    )


def check_task_out(
    out_dir: Path | str, *, inputs: Iterable[Path | str] = (), overwrite: bool = False
) -> None:
    """Refuse a task output directory whose writing would lose data.

    Args:
        out_dir: the task directory to be written.
        inputs: the input files (or directories) the task is built from.
        overwrite: whether an existing task directory may be replaced.

    Raises:
        ValueError: naming the directory when an input lies in it (or is it), when
            its parent cannot be written, when it exists and is not empty and not a
            task directory, when it holds files other than a task's, or when it is a
            task directory and not ``overwrite``.
    """
    out = Path(out_dir)
    where = out.resolve()
    for source in inputs:
        path = Path(source).resolve()
        if path == where or where in path.parents:
            raise ValueError(
                f"output {out} holds the input {source}: writing it would destroy "
                "the input; choose another output directory"
            )
    parent = where.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output {out}: {parent} is not a writable directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not is_task_dir(out):
        raise ValueError(
            f"output {out} is not empty and not a kfacel task directory "
            f"(it holds {', '.join(entries[:3])}{', …' if len(entries) > 3 else ''}); "
            "refusing to replace it"
        )
    extra = [e for e in entries if e not in TASK_FILES]
    if extra:
        raise ValueError(
            f"output {out} holds files that are not part of a task "
            f"({', '.join(extra[:3])}); refusing to replace it"
        )
    if not overwrite:
        raise ValueError(
            f"output {out} already holds a task; give --overwrite to replace it"
        )


def write_task(
    out_dir: Path | str,
    splits: Mapping[str, Sequence[LinkingExample]],
    info: Mapping[str, Any],
    *,
    aliases: AliasTable | None = None,
    retriever: RetrieverTuning | None = None,
    concepts: Sequence[Concept] | None = None,
) -> Path:
    """Write a task directory at once: the three splits, ``task.json``, the aliases.

    With ``concepts``: the dictionary, as ``DICTIONARY_FILE``.

    With ``retriever``: its checkpoint as ``retriever/`` (carrying the consolidation
    states of the checkpoint it started from) and its groups.

    The files are written into a hidden temporary sibling directory, which replaces
    ``out_dir`` once complete; it is removed on every error path.

    Raises:
        ValueError: when a split is missing or empty, or ``out_dir`` is neither absent,
            empty nor a task directory (see :func:`check_task_out`); before anything
            is written.
    """
    out = Path(out_dir)
    for split in SPLITS:
        if not splits.get(split):
            raise ValueError(f"{out}: split {split!r} is empty; a task needs all three")
    check_task_out(out, overwrite=True)

    def write(tmp: Path) -> None:
        for split in SPLITS:
            lines = (
                json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
                for e in splits[split]
            )
            _write(tmp / f"{split}.jsonl", "".join(lines))
        meta = {"format": FORMAT, **info}
        text = json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=False)
        _write(tmp / "task.json", text + "\n")
        if aliases is not None:
            links = json.dumps(aliases.to_json(), separators=(",", ":"))
            _write(tmp / ALIASES_FILE, links + "\n")
        if retriever is not None:
            retriever.write(tmp)
        if concepts is not None:
            write_ontology(tmp / DICTIONARY_FILE, concepts)

    atomic_dir(out, write, replace=is_task_dir)  # checked again at the rename
    return out


def _write(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def read_split(path: Path) -> list[LinkingExample]:
    """The queries of one ``*.jsonl`` split file.

    Raises:
        ValueError: naming the file and line of a bad line, or when there is no query.
    """
    out = []
    for lineno, raw in text_lines(path):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object")
            out.append(LinkingExample.from_json(obj))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    if not out:
        raise ValueError(f"{path}: the split has no query")
    return out


FINGERPRINTED = ("task.json", *(f"{split}.jsonl" for split in SPLITS))
"""The files that define a task's queries: what :func:`task_fingerprint` hashes."""


def task_fingerprint(task_dir: Path | str) -> dict[str, str]:
    """SHA-256 of each file of ``FINGERPRINTED`` in ``task_dir`` (hex, by file name).

    The files are read in blocks, never whole; one that is absent (a hand-made task
    without ``task.json``) is left out, so comparing two fingerprints names the files
    that were changed, added or removed.
    """
    out = {}
    for name in FINGERPRINTED:
        file = Path(task_dir) / name
        if file.is_file():
            with file.open("rb") as fh:
                out[name] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def load_task(task_dir: Path | str) -> Task:
    """Load a task directory written by ``tasks.prepare.prepare_task`` (or by hand).

    ``task.json`` is optional for hand-made tasks (the name is then the directory's).

    Raises:
        FileNotFoundError: when the directory or a split file is missing.
        ValueError: naming file and line of a bad line, or an empty split.
    """
    path = Path(task_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such task directory")
    info: dict[str, Any] = {}
    meta = path / "task.json"
    if meta.is_file():
        try:
            info = json.loads(read_text(meta))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{meta}:{exc.lineno}: not valid JSON: {exc.msg}"
            ) from None
        if not isinstance(info, dict):
            raise ValueError(f"{meta}: expected a JSON object")
    splits = {}
    for split in SPLITS:
        file = path / f"{split}.jsonl"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing split file")
        splits[split] = read_split(file)
    aliases = None
    if (path / ALIASES_FILE).is_file():
        try:
            aliases = AliasTable.from_json(json.loads(read_text(path / ALIASES_FILE)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path / ALIASES_FILE}: {exc}") from None
    name = str(info.get("name", path.name))
    tuned = path / RETRIEVER_DIR
    dictionary = path / DICTIONARY_FILE
    return Task(
        name=name,
        path=path,
        info=info,
        aliases=aliases,
        retriever=tuned if tuned.is_dir() else None,
        dictionary=dictionary if dictionary.is_file() else None,
        **splits,
    )
