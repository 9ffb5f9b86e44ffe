"""The drift probe: pseudo-queries from a dictionary alone, old model against new."""

from __future__ import annotations

import random

import pytest
import torch
from tests._synth import CODE_WORDS, code_task
from torch import nn

from kfacel.data.records import Concept
from kfacel.linking.linker import Linker, new_linker
from kfacel.tasks.directory import Task, load_task, write_task
from kfacel.training.drift import drift_probe, pseudo_mention, pseudo_queries
from kfacel.types import Batch

CONCEPTS = [
    Concept(f"C{i}", (f"{word} {CODE_WORDS[-1 - i]} disease", f"{word} syndrome"))
    for i, word in enumerate(CODE_WORDS[:12])
]


class Oracle(nn.Module):
    """Scores the gold highest, except on the queries ``wrong`` marks (the next one)."""

    def __init__(self, wrong: float = 0.0) -> None:
        super().__init__()
        self.wrong = wrong

    def forward(self, batch: Batch) -> torch.Tensor:
        n, c = batch.candidate_valid.shape
        rows = torch.arange(n)
        shift = torch.rand(n, generator=torch.Generator().manual_seed(n)) < self.wrong
        top = (batch.labels + shift.long()) % c
        logits = torch.zeros(n, c)
        logits[rows, top] = 1.0
        return logits


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Task:
    """A task whose dictionary is ``CONCEPTS`` (candidates by TF-IDF, C = 4)."""
    root = tmp_path_factory.mktemp("drift")
    splits = {
        s: code_task(s, range(12), 4, k) for k, s in enumerate(("train", "dev", "test"))
    }
    info = {"name": "a", "candidates": {"method": "tfidf", "num_candidates": 4}}
    return load_task(write_task(root / "a", splits, info, concepts=CONCEPTS))


@pytest.fixture(scope="module")
def linker(task) -> Linker:
    return new_linker(
        "cnn",
        task.train,
        features=False,
        types=False,
        hidden=8,
        embed_dim=8,
        embeddings_from=None,
        dropout=0.0,
    )


def with_model(linker: Linker, model: nn.Module) -> Linker:
    return Linker(model, linker.collator)


def test_identical_models_drift_by_nothing(task, linker) -> None:
    est = drift_probe(linker, linker, task, n=40, seed=0)
    assert est.drop == 0.0
    assert est.disagreement == 0.0
    assert est.forgotten == 0.0
    assert est.n == 40
    assert est.task == "a"


def test_a_model_whose_top_choice_moves_off_the_gold_drops_by_its_share(
    task, linker
) -> None:
    old = with_model(linker, Oracle())
    est = drift_probe(old, with_model(linker, Oracle(wrong=1.0)), task, n=30, seed=1)
    assert (est.accuracy_old, est.accuracy_new, est.drop) == (100.0, 0.0, 100.0)
    assert est.disagreement == 100.0
    assert est.forgotten == 100.0
    half = Oracle(wrong=0.5)
    part = drift_probe(old, with_model(linker, half), task, n=30, seed=1, batch_size=30)
    moved = (torch.rand(30, generator=torch.Generator().manual_seed(30)) < 0.5).sum()
    assert part.drop == pytest.approx(100.0 * int(moved) / 30)
    assert part.forgotten == pytest.approx(part.drop)
    scaled = drift_probe(
        old, with_model(linker, half), task, n=30, seed=1, batch_size=30, scale=0.5
    )
    assert scaled.drop == pytest.approx(0.5 * part.drop)


def test_the_probe_is_deterministic_in_its_seed(task, linker) -> None:
    other = new_linker(
        "cnn",
        task.train,
        features=False,
        types=False,
        hidden=8,
        embed_dim=8,
        embeddings_from=None,
        dropout=0.0,
        seed=1,
    )
    first = drift_probe(linker, other, task, n=25, seed=3)
    assert drift_probe(linker, other, task, n=25, seed=3) == first
    a = pseudo_queries(CONCEPTS, 25, seed=3, num_candidates=4)
    assert a == pseudo_queries(CONCEPTS, 25, seed=3, num_candidates=4)
    assert a != pseudo_queries(CONCEPTS, 25, seed=4, num_candidates=4)


def test_pseudo_queries_hold_their_gold_among_the_dictionary_candidates() -> None:
    queries = pseudo_queries(CONCEPTS, 30, seed=0, num_candidates=4)  # > 12: repeats
    ids = {c.id for c in CONCEPTS}
    for q in queries:
        assert len(q.candidates) == 4
        assert q.gold in {c.id for c in q.candidates}
        assert {c.id for c in q.candidates} <= ids
        assert q.left_context == q.right_context == ""


def test_a_pseudo_mention_is_a_synonym_or_the_name_with_one_part_left_out() -> None:
    rng = random.Random(0)
    assert pseudo_mention(
        Concept("X", ("Heart attack", "Myocardial Infarction")), rng
    ) == ("myocardial infarction")
    dropped = pseudo_mention(Concept("X", ("Pain in extremity",)), rng)
    assert dropped in {"in extremity", "pain extremity", "pain in"}
    typo = pseudo_mention(Concept("X", ("Headache",)), rng)
    assert len(typo) == 7
    assert typo[0] == "h"
    assert typo[-1] == "e"
    assert pseudo_mention(Concept("X", ("Flu",)), rng) == "flu"


def test_the_probe_refuses_a_task_without_dictionary_or_queries(task, linker) -> None:
    bare = Task("b", task.path, task.train, task.dev, task.test)
    with pytest.raises(ValueError, match=r"no .*dictionary"):
        drift_probe(linker, linker, bare)
    with pytest.raises(ValueError, match="at least 1"):
        pseudo_queries(CONCEPTS, 0, seed=0)
