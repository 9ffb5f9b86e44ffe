"""The demo tasks shipped inside the package (``README.md`` here says what they are).

``demo_tasks()`` loads them in the quickstart's order; the quickstart, the benchmarks
and the tests read them from here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kfacel.tasks.directory import Task, load_task

DEMO_TASKS = ("mm-demo", "psytar-demo", "ncbi-demo")
"""The demo task directories, in the quickstart's order."""


def demo_tasks() -> list[Task]:
    """The demo tasks shipped inside the package, in the quickstart's order."""
    root = resources.files("kfacel") / "demo"
    return [load_task(Path(str(root / name))) for name in DEMO_TASKS]
