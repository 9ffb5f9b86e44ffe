"""Shared test helpers: one torch thread per test, and the project's corpora."""

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
"""The repository's sibling ``shared/data``; tests marked ``data`` read it."""


@pytest.fixture
def shared_data() -> Path:
    """``SHARED_DATA``, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Dense name indexes are cached in a temporary directory, never in ``~/.cache``."""
    import os

    before = os.environ.get("KFACEL_CACHE_DIR")
    os.environ["KFACEL_CACHE_DIR"] = str(tmp_path_factory.mktemp("kfacel-cache"))
    yield
    if before is None:
        os.environ.pop("KFACEL_CACHE_DIR", None)
    else:
        os.environ["KFACEL_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def two_ontologies(tmp_path_factory):
    """A tiny model trained on task A (MEDIC-like) then B (MedDRA-like): ``_ontologies``."""
    from tests._ontologies import two_ontology_model

    return two_ontology_model(tmp_path_factory.mktemp("two-ontologies"))
