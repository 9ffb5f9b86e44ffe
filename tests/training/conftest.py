"""Fixtures of the trainer tests: synthetic batches, one CPU thread."""

import pytest
import torch
from _training_synth import batches


@pytest.fixture(scope="session")
def train_dev():
    return batches(64, 0, 8), batches(32, 1, 32)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
