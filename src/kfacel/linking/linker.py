"""A linker and its model directory: build one, save it, load it back.

A ``Linker`` is a ranker with the collator that feeds it. ``new_linker`` builds the
collator (tokenizer, string features, the training task's candidate-type vocabulary)
and a fresh ranker; ``training.fit.fit_task`` trains it on a task. ``save_linker``
writes the model directory: ``model.safetensors``, ``config.json`` (model, collator
settings, the task's candidate generator and context width, so ``link`` can rebuild
candidates), the tokenizer files, ``train_log.json`` and, for a linker with alias
features, ``aliases.json`` (the training split's mention-to-gold links,
``data/aliases.py``), and ``ontologies/NAME.jsonl.gz``, the dictionary of every task it
was trained on (``retrieval.ontology``; recorded in ``config.json``'s ``ontologies`` and
carried forward by each update, so that ``link`` searches all of them), all atomically.
``load_linker`` reads it back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kfacel.consolidation import TaskState, save_state
from kfacel.data.aliases import AliasTable
from kfacel.data.collate import Collator, build_type_vocab, make_batches
from kfacel.data.records import LinkingExample
from kfacel.data.tokenize import WordPieceTokenizer, default_encoder_path
from kfacel.models import (
    build_model,
    check_saved_files,
    load_model,
    read_model_config,
    replaceable_model_dir,
    save_model,
)
from kfacel.retrieval.ontology import SUFFIX, Ontology, write_ontology
from kfacel.tasks.directory import RETRIEVER_DIR

TRAIN_LOG_FILE = "train_log.json"
ALIASES_FILE = "aliases.json"
RETRIEVAL_FILE = "retrieval-aliases.json"
"""The training links of every task the linker learned, for retrieval's alias channel."""
RETRIEVAL_FORMAT = "kfacel-retrieval-aliases/1"
ONTOLOGY_DIR = "ontologies"
"""The dictionaries of the tasks a linker learned, one ontology file each."""


class JsonLog(Protocol):
    """A log written into the model directory (``training.trainer.TrainLog``)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        ...


@dataclass
class Linker:
    """A ranker with the collator that feeds it and its model-directory metadata."""

    model: nn.Module
    collator: Collator
    meta: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, AliasTable] = field(default_factory=dict)
    """Each trained task's alias table, by task name, carried forward like the
    consolidation states (a summary of the old data, kept by design); training on a
    task again replaces its table."""

    retriever: Path | None = None
    """The fine-tuned dense retriever of the last task trained on (a checkpoint
    directory, copied into the model directory as ``retriever/``); None: MiniLM as
    shipped, or no dense retrieval."""

    ontologies: tuple[Ontology, ...] = ()
    """The dictionary of every task trained on, in order of first use; one used by
    several tasks is listed once. Saved as ``ontologies/``, carried forward."""

    def retrieval_aliases(self) -> AliasTable | None:
        """The links of every task trained on, for retrieval (None: no such task)."""
        tables = list(self.retrieval.values())
        if not tables:
            return None
        merged = tables[0]
        for table in tables[1:]:
            merged = merged.merged(table)
        return merged

    def batches(self, examples: Sequence[LinkingExample], batch_size: int) -> list:
        """``Batch``es of ``examples`` for this linker's model."""
        return make_batches(examples, self.collator, batch_size=batch_size)


def new_linker(
    model: str,
    train: Sequence[LinkingExample],
    *,
    encoder: str | Path | None = None,
    layers: int = 3,
    features: bool = True,
    types: bool = True,
    aliases: bool | AliasTable = False,
    max_mention_length: int = 64,
    max_name_length: int = 16,
    seed: int = 0,
    **model_config: Any,
) -> Linker:
    """A fresh linker for training on ``train``.

    Args:
        model: ``cnn`` or ``transformer``.
        train: training queries (their candidates' types form the type vocabulary).
        encoder: checkpoint directory for the tokenizer and pretrained weights
            (None: the MiniLM package's).
        layers: transformer layers to keep.
        features: give the scorer string-similarity features.
        types: give the scorer candidate types and the type head.
        aliases: add the alias and prior features of ``train`` (needs ``features``);
            the table is a memory of the training links and is saved with the model.
            An ``AliasTable`` is used as the table instead (a retrieval task's
            ``aliases.json``: every training mention, not only the queries).
        max_mention_length: longest mention-in-context sequence.
        max_name_length: longest candidate-name sequence.
        seed: seed of the weights' random initialization.
        **model_config: further ranker settings (e.g. ``hidden``).
    """
    for key in ("embeddings_from", "encoder_path"):  # the ranker's names for `encoder`
        if not model_config.get(key):  # absent, or None: no pretrained weights
            continue
        given = model_config.pop(key)
        if encoder and Path(given) != Path(encoder):
            raise ValueError(f"{key} {given} and encoder {encoder} differ: give one")
        encoder = given  # the tokenizer comes with the weights
    path = Path(encoder) if encoder is not None else default_encoder_path()
    tokenizer = WordPieceTokenizer(path)
    vocab = build_type_vocab(train) if types else ()
    table = None
    if aliases is not False and features:
        table = (
            aliases
            if isinstance(aliases, AliasTable)
            else AliasTable.from_examples(train)
        )
    ranks = features and any(c.rank is not None for e in train for c in e.candidates)
    collator = Collator(
        tokenizer, max_mention_length, max_name_length, vocab, table, ranks
    )
    common: dict[str, Any] = {
        "num_features": len(collator.feature_names) if features else 0,
        "num_types": len(vocab),
        "start_id": tokenizer.start_id,
        "end_id": tokenizer.end_id,
    }
    if model == "cnn":
        common["embeddings_from"] = str(path)
    elif model == "transformer":
        common |= {"encoder_path": str(path), "layers": layers}
    with torch.random.fork_rng(devices=[]):  # the caller's random state is kept
        torch.manual_seed(seed)  # the initialization is part of a seeded run
        net = build_model(model, **{**common, **model_config})
    return Linker(net, collator)


def save_linker(
    linker: Linker,
    directory: str | Path,
    *,
    log: JsonLog | None = None,
    states: Sequence[TaskState] = (),
    replace: Callable[[Path], bool] | None = replaceable_model_dir,
) -> Path:
    """Write the model directory atomically: weights, config, tokenizer, log, states.

    Everything, the consolidation ``states`` carried forward included, is assembled in
    a temporary directory that is renamed into place once: the directory appears whole
    or not at all. An existing non-empty ``directory`` is replaced only when
    ``replace`` accepts it right before the rename (default: a kfacel model
    directory; None: none).
    """
    c = linker.collator
    extra = {
        **linker.meta,
        "ontologies": [
            o.to_json(f"{ONTOLOGY_DIR}/{o.name}{SUFFIX}" if o.stored else None)
            for o in linker.ontologies
        ],
        "collate": {
            "max_mention_length": c.max_mention_length,
            "max_name_length": c.max_name_length,
            "types": list(c.types),
            "ranks": c.ranks,
        },
    }

    def write_files(tmp: Path) -> None:
        c.tokenizer.save(tmp)
        if log is not None:
            text = json.dumps(log.to_json(), indent=2) + "\n"
            (tmp / TRAIN_LOG_FILE).write_text(text, encoding="utf-8")
        if c.aliases is not None:
            text = json.dumps(c.aliases.to_json(), separators=(",", ":")) + "\n"
            (tmp / ALIASES_FILE).write_text(text, encoding="utf-8")
        if linker.retriever is not None:
            shutil.copytree(linker.retriever, tmp / RETRIEVER_DIR)
        if linker.retrieval:
            tasks = {name: t.to_json() for name, t in linker.retrieval.items()}
            obj = {"format": RETRIEVAL_FORMAT, "tasks": tasks}
            text = json.dumps(obj, separators=(",", ":")) + "\n"
            (tmp / RETRIEVAL_FILE).write_text(text, encoding="utf-8")
        for state in states:
            save_state(tmp, state)
        for o in linker.ontologies:
            _write_ontology(o, tmp / ONTOLOGY_DIR / f"{o.name}{SUFFIX}")

    return save_model(
        linker.model, directory, extra=extra, write_files=write_files, replace=replace
    )


def load_linker(directory: str | Path) -> Linker:
    """The linker saved in ``directory`` (model in eval mode on the CPU)."""
    meta = read_model_config(directory)
    model = load_model(directory)
    check_saved_files(directory, skip=frozenset({TRAIN_LOG_FILE}))
    settings = meta.get("collate", {})
    aliases = _read_aliases(Path(directory) / ALIASES_FILE)
    collator = Collator(
        WordPieceTokenizer(directory),
        max_mention_length=int(settings.get("max_mention_length", 64)),
        max_name_length=int(settings.get("max_name_length", 16)),
        types=tuple(settings.get("types", ())),
        aliases=aliases,
        ranks=bool(settings.get("ranks", False)),
    )
    wanted = int(meta.get("config", {}).get("num_features", 0))
    if wanted not in (0, len(collator.feature_names)):
        raise ValueError(
            f"{directory}: the model takes {wanted} features but the collator makes "
            f"{len(collator.feature_names)} (is {ALIASES_FILE} missing?)"
        )
    own_keys = ("format", "model", "config", "collate", "ontologies")
    extra = {k: v for k, v in meta.items() if k not in own_keys}
    tuned = Path(directory) / RETRIEVER_DIR
    return Linker(
        model,
        collator,
        extra,
        _read_retrieval(Path(directory)),
        tuned if tuned.is_dir() else None,
        _read_ontologies(Path(directory), meta),
    )


def _write_ontology(ontology: Ontology, file: Path) -> None:
    """Put ``ontology``'s concepts at ``file`` (a copy of its file when it has one)."""
    if not ontology.stored:
        return
    file.parent.mkdir(exist_ok=True)
    if ontology.file is not None:
        shutil.copyfile(ontology.file, file)
    else:
        write_ontology(file, ontology.concepts())


def _read_ontologies(directory: Path, meta: dict[str, Any]) -> tuple[Ontology, ...]:
    """The ontologies ``config.json`` records (older models: their last task's, by digest).

    A model saved before models kept their dictionaries records its last task's
    dictionary by digest alone, when its task recorded one.

    Raises:
        ValueError: naming the directory when a record is malformed or its file missing.
    """
    records = meta.get("ontologies")
    if records is None:
        task = meta.get("task", {})
        cands = task.get("candidates", {})
        if not cands.get("dictionary_sha256"):
            return ()
        name = str(task.get("name", "task"))
        size = int(cands.get("dictionary_size", 0))
        return (Ontology(name, cands["dictionary_sha256"], size, (name,)),)
    try:
        out = tuple(Ontology.from_json(r, directory) for r in records)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{directory}/config.json: bad 'ontologies' ({exc})") from None
    for o in out:
        if o.file is not None and not o.file.is_file():
            raise ValueError(f"{o.file}: missing (ontology {o.name!r} of {directory})")
    return out


def _read_retrieval(directory: Path) -> dict[str, AliasTable]:
    """The per-task alias tables of ``RETRIEVAL_FILE`` (empty when there is none).

    Raises:
        ValueError: naming the file when it is not such a file.
    """
    file = directory / RETRIEVAL_FILE
    if not file.is_file():
        return {}
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
        if obj.get("format") != RETRIEVAL_FORMAT:
            raise ValueError(f"format {obj.get('format')!r}, not {RETRIEVAL_FORMAT!r}")
        return {str(n): AliasTable.from_json(t) for n, t in obj["tasks"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{file}: {exc}") from None


def _read_aliases(file: Path) -> AliasTable | None:
    """The alias table in ``file``, None when there is no such file.

    Raises:
        ValueError: naming the file when it is not an alias table.
    """
    if not file.is_file():
        return None
    try:
        return AliasTable.from_json(json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: {exc}") from None
