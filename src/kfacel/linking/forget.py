"""Forget a task from a linker: its weights, its consolidation states and its links.

The weights are dampened by selective synaptic dampening from the states
(``consolidation.forget``, eqs. F1–F5); the task's own state is dropped and the
retained tasks' states travel on (those finished after it with their anchors dampened
alike). What else a model directory keeps of the task's data goes too: its training
links in the retrieval alias table (``Linker.retrieval``). Two things kfacel cannot
take apart are refused instead of kept silently: alias features built from the task's
training links (``aliases.json``, made from the first task trained) and a fine-tuned
dense retriever (``retriever/``), whose weights forget does not reach. The task's
dictionary (``ontologies/``) is an ontology, not the task's data, and is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kfacel.consolidation import TaskState
from kfacel.consolidation.forget import (
    DEFAULT_ALPHA,
    DEFAULT_LAM,
    ForgetMethod,
    forget_task,
)
from kfacel.linking.linker import ALIASES_FILE, Linker
from kfacel.tasks.directory import RETRIEVER_DIR


def forget_linker(
    linker: Linker,
    states: Sequence[TaskState],
    task: str,
    *,
    method: ForgetMethod | str = ForgetMethod.KFAC_SSD,
    alpha: float = DEFAULT_ALPHA,
    lam: float = DEFAULT_LAM,
) -> tuple[tuple[TaskState, ...], dict[str, Any]]:
    """Forget ``task`` in place: the linker's weights, links and record.

    Args:
        linker: the model (its weights are replaced by the dampened ones).
        states: its consolidation states (``load_state``).
        task: the name of the task to forget.
        method: ``kfac-ssd`` (the task's K-FAC eigenbasis) or ``ssd`` (parameters).
        alpha: SSD's selection threshold α.
        lam: SSD's dampening constant λ.

    Returns:
        The states to keep, and what was done (recorded in ``linker.meta["forgotten"]``).

    Raises:
        ValueError: in one line: an unknown task (naming the known ones), the only
            task, a state without a Fisher, or a part of the model forget cannot reach.
    """
    _check_reachable(linker, task)
    params = {n: p.detach() for n, p in linker.model.named_parameters()}
    new, kept, dampening = forget_task(
        params, states, task, method=method, alpha=alpha, lam=lam
    )
    with torch.no_grad():
        for name, p in linker.model.named_parameters():
            p.copy_(new[name])
    linker.retrieval.pop(task, None)
    dampened, covered = dampening.dampened()
    record = {
        "task": task,
        "method": str(ForgetMethod(method)),
        "alpha": alpha,
        "lam": lam,
        "dampened": dampened,
        "covered": covered,
        "retained": [s.task for s in kept],
    }
    linker.meta["forgotten"] = [*linker.meta.get("forgotten", []), record]
    return kept, record


def _check_reachable(linker: Linker, task: str) -> None:
    """Refuse a model whose alias features or retriever hold what forget cannot remove.

    Raises:
        ValueError: naming the part (``aliases.json`` or ``retriever/``).
    """
    history = linker.meta.get("history", [])
    if linker.collator.aliases is not None and history[:1] == [task]:
        raise ValueError(
            f"the model's alias features ({ALIASES_FILE}) were built from task "
            f"{task!r}'s training links and cannot be forgotten: retrain without them"
        )
    if linker.retriever is not None:
        raise ValueError(
            f"the model holds a fine-tuned retriever ({RETRIEVER_DIR}/) that forget "
            f"does not reach: it may keep task {task!r}; retrain the retriever first"
        )
