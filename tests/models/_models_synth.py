"""Synthetic linking queries for the model tests: the gold is the mention's name."""

import random

from kfacel.data.records import Candidate, LinkingExample

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


TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
