"""make_penalty: a penalty is built only from states that fit it."""

from __future__ import annotations

import pytest

from kfacel import (
    TaskState,
    build_penalty,
    estimate_diagonal,
    load_state,
    save_state,
    snapshot,
)
from tests.consolidation.test_store import _data


def test_penalty_without_state_or_with_wrong_method_is_refused(tmp_path) -> None:
    model, batches = _data()
    with pytest.raises(ValueError, match="consolidate"):
        build_penalty("kfac", [], [])
    save_state(
        tmp_path,
        TaskState("A", "ewc", snapshot(model), estimate_diagonal(model, batches)),
    )
    with pytest.raises(ValueError, match="--method kfac"):
        build_penalty("kfac", load_state(tmp_path), [1.0])
