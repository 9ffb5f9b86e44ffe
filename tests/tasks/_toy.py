"""A toy task: four concepts, three splits of one-sentence documents, built with TF-IDF."""

from pathlib import Path

from kfacel.data.records import Concept, Mention
from kfacel.tasks.prepare import TaskSettings, prepare_task

CONCEPTS = [
    Concept("C1", ("chest pain",), "T184"),
    Concept("C2", ("headache",), "T184"),
    Concept("C3", ("fever",), "T184"),
    Concept("C4", ("nausea",), "T184"),
]

SETTINGS = {"method", "num_candidates", "context_words", "seed", "max_queries"}
"""The keywords of ``prepare_toy`` that are ``TaskSettings`` fields."""


def toy_mention(doc: str, surface: str, cid: str, line: int = 1) -> Mention:
    """``surface`` in a sentence of document ``doc``, linked to ``cid``."""
    text = f"the patient had {surface} on day one of the trial"
    start = text.index(surface)
    return Mention(
        doc, text, ((start, start + len(surface)),), surface, (cid,), line=line
    )


def toy_splits() -> dict[str, list[Mention]]:
    """Two training mentions; dev and test each with a mention that is skipped."""
    return {
        "train": [
            toy_mention("d1", "chest pain", "C1"),
            toy_mention("d2", "headache", "C2"),
        ],
        "dev": [toy_mention("d3", "fever", "C3"), toy_mention("d3", "fever", "C9")],
        "test": [
            toy_mention("d4", "nausea", "C4"),
            Mention("d4", "x y", ((0, 1),), "x", ("C1", "C2")),
        ],
    }


def prepare_toy(out: Path, **kw: object) -> dict:
    """The toy task written to ``out`` (C = 3, K = 2, seed 5 unless ``kw`` says)."""
    args: dict = {
        "name": "toy",
        "splits": toy_splits(),
        "concepts": CONCEPTS,
        "method": "tfidf",
        "num_candidates": 3,
        "context_words": 2,
        "seed": 5,
    }
    args.update(kw)
    settings = TaskSettings(**{k: args.pop(k) for k in SETTINGS if k in args})
    return prepare_task(out, settings=settings, **args)
