"""Train a linker on one task: its splits to batches, ``train_task``, the task recorded.

``fit_task`` is the step between a ``Linker`` (``linking.linker``) and the training loop
(``training.trainer.train_task``): it batches the train and dev splits (and replayed
queries) with the linker's collator, trains, and records in the linker what the model
directory must say about the task (its candidate generator and context width, its alias
table, fine-tuned retriever and dictionary), so ``save_linker`` and ``link`` can use
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kfacel.data.records import LinkingExample
from kfacel.linking.linker import Linker
from kfacel.linking.ontologies import task_ontology
from kfacel.penalties.base import Penalty
from kfacel.retrieval.ontology import learn
from kfacel.tasks.directory import Task, task_fingerprint
from kfacel.training.trainer import Replay, TrainLog, TrainSettings, train_task


def fit_task(
    linker: Linker,
    task: Task,
    settings: TrainSettings,
    *,
    penalty: Penalty | None = None,
    lr_groups: Sequence[dict[str, Any]] | None = None,
    replay: Replay[LinkingExample] | None = None,
    progress: bool = False,
) -> TrainLog:
    """Train ``linker`` on ``task``'s train split, choosing the epoch on dev.

    Args:
        linker: from ``new_linker`` or ``load_linker``.
        task: the task.
        settings: epochs, learning rate, batch size, seed, device, ``max_train``.
        penalty: consolidation penalty of earlier tasks, None for none.
        lr_groups: optimizer groups, e.g. ``discriminative_lr_groups`` (LRC).
        replay: queries of earlier tasks for experience replay (needs old data).
        progress: progress bars.

    Returns:
        The training log.
    """
    train = task.train[: settings.max_train] if settings.max_train else task.train
    size = settings.batch_size
    replayed = None
    if replay is not None:
        replayed = Replay(linker.batches(replay.items, size), replay.every, replay.n)
    log = train_task(
        linker.model,
        linker.batches(train, size),
        settings,
        dev_batches=linker.batches(task.dev, max(size, 64)),
        penalty=penalty,
        lr_groups=lr_groups,
        replay=replayed,
        progress=progress,
    )
    linker.model.to("cpu")
    if task.aliases is not None:
        linker.retrieval[task.name] = task.aliases
    linker.retriever = task.retriever  # candidates are the last task's
    ontology = task_ontology(task)
    if ontology is not None:  # link searches every task's dictionary
        linker.ontologies = learn(linker.ontologies, ontology)
    linker.meta["task"] = {
        "name": task.name,
        "candidates": task.info.get("candidates", {}),
        "context_words": task.info.get("context_words", 10),
        "fingerprint": task_fingerprint(task.path),  # consolidate checks it is this one
    }
    return log
