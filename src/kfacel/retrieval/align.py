"""One dense retriever for every ontology: SapBERT-style alignment on their union.

``prepare --retriever-epochs`` aligns a task's retriever on its own dictionary and
training links. Here the retriever is aligned once on the synonyms of every dictionary
a user has (eq. R2 over the union of their synonym groups; Liu et al. 2021 align
SapBERT on all of UMLS at once), kept as a local checkpoint and reused by every task
(``prepare --retriever-init DIR``): as it is, or fine-tuned further on the task.

Across dictionaries, the groups of concepts that share a name (case-insensitive) are
merged: two ontologies that both name "fever" name one meaning, and as separate groups
the same text would be its own negative in a batch. Within one dictionary the groups
stay as the dictionary has them, as in a task's alignment. Only dictionary names are
read: no mention, no patient text.

The aligned checkpoint holds its own K-FAC state (``retrieval.continual``, eq. R3), so
a task or a later alignment that fine-tunes it further is penalized for leaving it
(eq. P1), and a record, ``aligned.json``: each dictionary's source, digest, size and
groups, the settings, and what was done. A later alignment started from it
(``init``) carries its states on and adds its own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kfacel._io import atomic_dir
from kfacel.consolidation import TaskState, save_state, state_tasks
from kfacel.data.records import Concept
from kfacel.retrieval.base import dictionary_digest
from kfacel.retrieval.continual import DEFAULT_RETRIEVER_STEPS, consolidate_retriever
from kfacel.retrieval.dense import RETRIEVER_STATES, SentenceEncoder
from kfacel.retrieval.finetune import RetrieverSettings, align_groups, synonym_groups

FORMAT = "kfacel-aligned-retriever/1"
RECORD_FILE = "aligned.json"


@dataclass(frozen=True)
class Dictionary:
    """One dictionary to align on: a name (the state's and the record's) and its concepts.

    Attributes:
        name: a short name, e.g. the file's stem.
        concepts: its concepts.
        source: where it was read from, for the record.
    """

    name: str
    concepts: Sequence[Concept]
    source: str = ""


@dataclass(frozen=True)
class Aligned:
    """An aligned retriever before it is written: encoder, groups, state, record."""

    encoder: SentenceEncoder
    groups: list[tuple[str, ...]]
    state: TaskState | None
    record: dict[str, Any]
    init: Path | None = None
    """The checkpoint it started from; its consolidation states travel on."""


def merged_groups(
    dictionaries: Sequence[Sequence[tuple[str, ...]]],
) -> list[tuple[str, ...]]:
    """The synonym groups of several dictionaries, merged where they share a name.

    A group of a later dictionary that shares a name (case-insensitive) with a group of
    an earlier one joins the first such group, adding its new names; groups of one
    dictionary are never merged with each other.

    >>> merged_groups([[("Fever", "pyrexia")], [("fever", "febrile"), ("a", "b")]])
    [('Fever', 'pyrexia', 'febrile'), ('a', 'b')]
    """
    out: list[list[str]] = []
    owner: dict[str, int] = {}  # lowercased name → group of an earlier dictionary
    for groups in dictionaries:
        added: dict[str, int] = {}
        for group in groups:
            hits = [owner[n.lower()] for n in group if n.lower() in owner]
            if hits:
                target = out[hits[0]]
                seen = {n.lower() for n in target}
                target += [n for n in group if n.lower() not in seen]
                index = hits[0]
            else:
                out.append(list(group))
                index = len(out) - 1
            for n in group:
                added.setdefault(n.lower(), index)
        for name, index in added.items():
            owner.setdefault(name, index)
    return [tuple(g) for g in out]


def align_retriever(
    dictionaries: Sequence[Dictionary],
    settings: RetrieverSettings,
    *,
    consolidate_steps: int | None = DEFAULT_RETRIEVER_STEPS,
    progress: bool = False,
) -> Aligned:
    """Align a retriever on the synonyms of every dictionary at once (eq. R2).

    Args:
        dictionaries: the dictionaries, in order (merging keeps the first's names first).
        settings: epochs, batch, rate, temperature, seed; ``settings.start``: start from
            that checkpoint, its states penalizing the update (None: MiniLM as shipped).
            ``settings.mentions`` is ignored: only names are read.
        consolidate_steps: batches the K-FAC state is estimated on (None: one epoch;
            0: no state).
        progress: progress bars.

    Raises:
        ValueError: no dictionary, a name given twice, or fewer than two groups.
    """
    names = [d.name for d in dictionaries]
    if not dictionaries:
        raise ValueError("give at least one dictionary to align on")
    if len(set(names)) != len(names):
        raise ValueError(f"dictionary names must differ: {names}")
    per_dictionary = [synonym_groups(d.concepts) for d in dictionaries]
    groups = merged_groups(per_dictionary)
    if len(groups) < 2:
        raise ValueError(
            f"alignment needs concepts with synonyms; the dictionaries {names} have "
            f"{len(groups)} concept with two names or more"
        )
    init = settings.start.checkpoint if settings.start is not None else None
    task = "+".join(names)
    if init is not None and task in state_tasks(init):
        raise ValueError(
            f"{init} holds an alignment on {task} already: align it on other "
            "dictionaries, or give more --epochs to an alignment from MiniLM"
        )
    encoder = SentenceEncoder(init)
    done = align_groups(encoder, groups, settings, progress=progress)
    state = None
    if consolidate_steps != 0:
        state = consolidate_retriever(
            encoder, groups, settings, task=task,
            max_steps=consolidate_steps, progress=progress,
        )  # fmt: skip
    record = _record(dictionaries, per_dictionary, groups, settings, done)
    return Aligned(encoder, groups, state, record, init)


def _record(
    dictionaries: Sequence[Dictionary],
    per_dictionary: Sequence[Sequence[tuple[str, ...]]],
    groups: Sequence[tuple[str, ...]],
    settings: RetrieverSettings,
    done: dict[str, Any],
) -> dict[str, Any]:
    """``aligned.json``: what was aligned, how, and what was done."""
    listed = [
        {
            "name": d.name,
            "source": d.source,
            "sha256": dictionary_digest(d.concepts),
            "concepts": len(d.concepts),
            "concepts_with_synonyms": len(g),
        }
        for d, g in zip(dictionaries, per_dictionary, strict=True)
    ]
    return {
        "format": FORMAT,
        "dictionaries": listed,
        "groups": len(groups),
        "settings": replace(settings, mentions=False).to_json(),
        **done,
    }


def write_aligned(
    out: Path | str,
    aligned: Aligned,
    *,
    replace: Callable[[Path], bool] | None = None,
) -> Path:
    """Write the checkpoint, its states and ``aligned.json`` to ``out`` at once.

    ``replace``: whether an existing ``out`` may be replaced (``atomic_dir``).
    """

    def write(tmp: Path) -> None:
        aligned.encoder.save(tmp)
        states = aligned.init / RETRIEVER_STATES if aligned.init else None
        if states is not None and states.is_dir():
            shutil.copytree(states, tmp / RETRIEVER_STATES)
        if aligned.state is not None:
            save_state(tmp, aligned.state)
        text = json.dumps(aligned.record, indent=2, sort_keys=True, ensure_ascii=False)
        (tmp / RECORD_FILE).write_text(text + "\n", encoding="utf-8")

    return atomic_dir(out, write, replace=replace)


def is_aligned_dir(path: Path | str) -> bool:
    """Whether ``path`` is a retriever directory written by ``write_aligned``."""
    try:
        record = json.loads((Path(path) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == FORMAT
