"""Task directories: preparing them from a corpus, splitting, writing and loading.

``directory`` is the on-disk task (``Task``, ``load_task``, ``write_task``, the
fingerprints and format marks); ``prepare`` builds a task's queries with retrieval
(``prepare_task`` and its ``TaskSettings``); ``split`` splits mentions by document;
``benchmark`` builds the PUBLIC-3 tasks from ``shared/data``.

Tasks sit above ``retrieval`` (preparation runs it) and below ``training``.
"""

from kfacel.tasks.directory import (
    SPLITS,
    Task,
    check_task_out,
    is_task_dir,
    load_task,
    task_fingerprint,
    write_task,
)
from kfacel.tasks.prepare import TaskSettings, prepare_task
from kfacel.tasks.split import split_by_document

__all__ = [
    "SPLITS",
    "Task",
    "TaskSettings",
    "check_task_out",
    "is_task_dir",
    "load_task",
    "prepare_task",
    "split_by_document",
    "task_fingerprint",
    "write_task",
]
