"""Synthetic linking queries: the gold is the candidate whose name is the mention."""

import random

import pytest
import torch

from kfacel.data.collate import Collator, make_batches
from kfacel.data.records import Candidate, LinkingExample
from kfacel.data.tokenize import WordPieceTokenizer

WORDS = [
    "heart",
    "lung",
    "liver",
    "kidney",
    "brain",
    "blood",
    "bone",
    "skin",
    "nerve",
    "muscle",
    "fever",
    "pain",
    "cough",
    "rash",
    "tumor",
    "cancer",
    "virus",
    "cell",
    "gene",
    "protein",
    "drug",
    "dose",
    "acute",
    "chronic",
    "severe",
    "mild",
]
TYPES = ("disease", "anatomy", "chemical")


def synthetic_examples(n: int, *, seed: int, num_candidates: int = 5) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        names = rng.sample(WORDS, num_candidates)
        gold = rng.randrange(num_candidates)
        cands = tuple(
            Candidate(f"C{WORDS.index(w)}", w, TYPES[WORDS.index(w) % 3]) for w in names
        )
        left = " ".join(rng.choices(WORDS, k=4))
        right = " ".join(rng.choices(WORDS, k=4))
        out.append(
            LinkingExample(names[gold], left, right, cands, cands[gold].id, f"d{i}")
        )
    return out


@pytest.fixture(scope="session")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer()


@pytest.fixture(scope="session")
def synthetic_batches(tokenizer):
    collator = Collator(tokenizer, max_mention_length=16, max_name_length=6)
    train = make_batches(synthetic_examples(256, seed=0), collator, batch_size=16)
    dev = make_batches(synthetic_examples(128, seed=1), collator, batch_size=64)
    return train, dev


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
