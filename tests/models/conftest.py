"""Fixtures of the model tests: tokenizer, synthetic batches, one CPU thread."""

import pytest

from kfacel.data.collate import Collator, make_batches
from kfacel.data.tokenize import WordPieceTokenizer
from tests._synth import synthetic_examples


@pytest.fixture(scope="session")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer()


@pytest.fixture(scope="session")
def synthetic_batches(tokenizer):
    collator = Collator(tokenizer, max_mention_length=16, max_name_length=6)
    train = make_batches(synthetic_examples(256, seed=0), collator, batch_size=16)
    dev = make_batches(synthetic_examples(128, seed=1), collator, batch_size=64)
    return train, dev
