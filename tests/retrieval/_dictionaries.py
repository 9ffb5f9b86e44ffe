"""Hand-made dictionaries the retrieval tests rank."""

from kfacel.data.records import Concept

SYMPTOMS = [
    Concept("C1", ("chest pain", "thoracic pain")),
    Concept("C2", ("headache", "cephalgia")),
    Concept("C3", ("fever", "pyrexia")),
    Concept("C4", ("abdominal pain",)),
    Concept("C5", ("nausea",)),
    Concept("C6", ("back pain",), alt_ids=("ALT6",)),
    Concept("C7", ("insomnia",)),
    Concept("C8", ("dizziness",)),
]
"""Symptoms with a synonym or none, one with an alternative id."""

SYNONYMS = [
    Concept("C1", ("Myocardial infarction", "Heart attack")),
    Concept("C2", ("Headache", "Cephalalgia")),
    Concept("C3", ("Fever", "Pyrexia")),
    Concept("C4", ("Nausea",)),
    Concept("C5", ("Insomnia", "Sleeplessness")),
]
"""Concepts whose synonyms share few character 3-grams with their preferred names."""


class HashEncoder:
    """A stand-in sentence encoder: each text's unit vector is seeded by its bytes.

    A text's embedding does not depend on what it is encoded with, so any batching
    (in memory, in chunks on disk) gives the same matrix; ``calls`` lists the texts of
    every ``encode``.
    """

    key, dim = "hash-encoder", 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        import zlib

        import numpy as np

        self.calls.append(list(texts))
        rows = [
            np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim)
            for t in texts
        ]
        out = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)
