"""Which dictionary a linker searches: its ontologies, one of them, or a file given.

A model directory keeps the dictionary of every task it was trained on
(``linking.linker``, ``retrieval.ontology``). ``task_ontology`` is what training
records of a task: its ``dictionary.jsonl.gz``, else (a task prepared before tasks kept
their dictionary) the dictionary file its ``task.json`` names, when that file is still
there and hashes to the recorded digest, else the digest alone. ``search_dictionary``
chooses what ``link`` searches: by default the union of every stored ontology; one by
name; or a dictionary file, accepted when it is one the model learned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from kfacel.data.readers import read_dictionary
from kfacel.retrieval.base import dictionary_digest
from kfacel.retrieval.ontology import Ontology, Union, ontology_name, union
from kfacel.tasks.directory import Task

logger = logging.getLogger(__name__)


def task_ontology(task: Task) -> Ontology | None:
    """The ontology ``task`` was prepared with, None when its task.json records none."""
    cands = task.info.get("candidates", {})
    digest = cands.get("dictionary_sha256")
    if not digest:
        return None
    sources = task.info.get("sources") or [None]
    source = None if sources[-1] is None else str(sources[-1])  # the dictionary last
    record = Ontology(
        ontology_name(source, task.name),
        str(digest),
        int(cands.get("dictionary_size", 0)),
        (task.name,),
        source,
    )
    if task.dictionary is not None:
        return replace(record, file=task.dictionary)
    if source is not None and Path(source).is_file():
        concepts = read_dictionary(source)
        if dictionary_digest(concepts) == digest:
            return replace(record, loaded=tuple(concepts))
    logger.warning(
        "task %s keeps no copy of its dictionary (prepared by an older kfacel) and %s "
        "is not that dictionary: the model records it by digest only, and `link` "
        "needs --dictionary for it",
        task.name,
        source or "no dictionary file it names",
    )
    return record


def search_dictionary(
    ontologies: Sequence[Ontology],
    *,
    ontology: str | None = None,
    dictionary: str | Path | None = None,
    where: str = "the model",
    warn: Callable[[str], None] = logger.warning,
) -> Union:
    """The concepts ``link`` searches, each knowing its ontology.

    Args:
        ontologies: the model's (``Linker.ontologies``).
        ontology: search this one alone (by name).
        dictionary: search this dictionary file; it must be one of ``ontologies``
            (equal digest); a model that records no digest takes it unchecked, with a
            warning.
        where: the model directory, for messages.
        warn: receives each warning line (default: this module's logger).

    Returns:
        The union of every stored ontology (default), or the one chosen.

    Raises:
        ValueError: an unknown ontology name, a dictionary the model did not learn, both
            given, or nothing stored to search.
    """
    if ontology is not None and dictionary is not None:
        raise ValueError("give an ontology or a dictionary file, not both")
    if dictionary is not None:
        return _from_file(ontologies, Path(dictionary), where, warn)
    names = [o.name for o in ontologies]
    if ontology is not None:
        chosen = [o for o in ontologies if o.name == ontology]
        if not chosen:
            raise ValueError(f"ontology {ontology!r}: {where} learned {_listed(names)}")
        return union([(chosen[0].name, chosen[0].concepts())])
    stored = [o for o in ontologies if o.stored]
    if not stored:
        raise ValueError(
            f"{where} keeps no dictionary (trained by an older kfacel, or on tasks "
            "prepared by one): give the dictionary file its task was prepared with"
        )
    for o in ontologies:
        if not o.stored:
            warn(
                f"ontology {o.name} of {where} is recorded by its digest only and is "
                "not searched: link with its dictionary file to search it"
            )
    return union([(o.name, o.concepts()) for o in stored])


def _from_file(
    ontologies: Sequence[Ontology], path: Path, where: str, warn: Callable[[str], None]
) -> Union:
    """The dictionary file ``path`` as the ontology of the model it equals."""
    concepts = read_dictionary(path)
    if not ontologies:
        warn(
            f"{where} records no digest of the dictionary it was trained with (its "
            f"task was prepared by an older kfacel), so {path} is not checked against "
            "it: candidate ranks match training only if it is that dictionary"
        )
        return union([(ontology_name(str(path), "dictionary"), concepts)])
    digest = dictionary_digest(concepts)
    for o in ontologies:
        if o.sha256 == digest:
            return union([(o.name, concepts)])
    known = ", ".join(
        f"{o.name} ({o.size} concepts, sha256 {o.sha256[:12]}…)" for o in ontologies
    )
    raise ValueError(
        f"{path} ({len(concepts)} concepts) differs from every dictionary {where} "
        f"was trained with ({known}): candidate ranks would not match training; give one "
        "of those, or leave the dictionary out to search them all"
    )


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "no named ontology"
