"""Tiny synthetic tasks and models for the trainer tests."""

import random

import torch

from kfacel.data.collate import Collator, make_batches
from kfacel.data.records import Candidate, LinkingExample
from kfacel.data.tokenize import WordPieceTokenizer
from kfacel.models import build_model

WORDS = ("heart", "lung", "liver", "kidney", "brain", "blood", "bone", "skin")


def examples(n: int, seed: int) -> list[LinkingExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        names = rng.sample(WORDS, 4)
        gold = rng.randrange(4)
        cands = tuple(Candidate(w, w) for w in names)
        left = " ".join(rng.choices(WORDS, k=3))
        out.append(LinkingExample(names[gold], left, "", cands, names[gold]))
    return out


def batches(n: int, seed: int, batch_size: int) -> list:
    collator = Collator(WordPieceTokenizer(), max_mention_length=12, max_name_length=4)
    return make_batches(examples(n, seed), collator, batch_size=batch_size)


def tiny_cnn(dropout: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", embed_dim=8, hidden=16, dropout=dropout, num_features=7)
