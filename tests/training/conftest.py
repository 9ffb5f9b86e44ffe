"""Fixtures of the trainer tests: synthetic batches, one CPU thread."""

import pytest
from _training_synth import batches


@pytest.fixture(scope="session")
def train_dev():
    return batches(64, 0, 8), batches(32, 1, 32)
