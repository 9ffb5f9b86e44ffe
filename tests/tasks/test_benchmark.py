"""PUBLIC-3 from ``shared/data``: the small CADEC task builds (skipped without the data)."""

from pathlib import Path

import pytest

from kfacel.tasks.benchmark import build_public3
from kfacel.tasks.directory import load_task

pytestmark = pytest.mark.data


def test_small_cadec_task_builds(shared_data: Path, tmp_path: Path) -> None:
    info = build_public3(shared_data, tmp_path, small=True, tasks=("cadec",))["cadec"]
    task = load_task(tmp_path / "cadec")
    assert len(task.train) == info["counts"]["train"]["queries"] > 3000
    assert all(len(e.candidates) == 10 for e in task.test)
    assert {len({m.doc_id for m in s}) for s in (task.dev,)} == {110}
