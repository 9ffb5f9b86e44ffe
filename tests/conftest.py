"""Shared test helpers: the location of the project's corpora (``../shared/data``)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
"""The repository's sibling ``shared/data``; tests marked ``data`` read it."""


@pytest.fixture
def shared_data() -> Path:
    """``SHARED_DATA``, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA
