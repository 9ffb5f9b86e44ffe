"""Reading a run's finished cells one by one: which count, and a cell's records."""

from __future__ import annotations

import json

import pytest

from kfacel.experiments.results import cell_record, finished_cells


def _write_done(run, cell: str, done: dict) -> None:
    (run / "cells" / cell).mkdir(parents=True)
    (run / "cells" / cell / "done.json").write_text(json.dumps(done), encoding="utf-8")


def test_finished_cells_are_the_ok_ones_in_cell_order(tmp_path) -> None:
    records = [
        {"task": "a", "split": "test", "accuracy": 50.0},
        {"task": "a", "split": "dev", "accuracy": 40.0},
    ]
    _write_done(tmp_path, "tier2-b", {"id": "tier2-b", "status": "ok", "records": []})
    _write_done(
        tmp_path, "tier2-a", {"id": "tier2-a", "status": "ok", "records": records}
    )
    _write_done(tmp_path, "tier2-c", {"id": "tier2-c", "status": "failed"})
    (tmp_path / "cells" / "tier2-d").mkdir()  # interrupted: no done.json
    cells = finished_cells(tmp_path)
    assert [d["id"] for d in cells] == ["tier2-a", "tier2-b"]
    assert cell_record(cells[0], "a")["accuracy"] == 50.0
    assert cell_record(cells[0], "a", "dev")["accuracy"] == 40.0
    with pytest.raises(StopIteration):
        cell_record(cells[0], "b")


def test_a_run_without_cells_has_no_finished_cell(tmp_path) -> None:
    assert finished_cells(tmp_path) == []
