"""The drift probe: an old task's accuracy drop, estimated without its data.

After a model that finished task A (``old``, at θ*) is trained on a new task (``new``),
how much of A has it forgotten? The penalty's quadratic ½ΔᵀFΔ answers in nats and
under-predicts (docs/results.md, "How well the penalty predicts forgetting"). The probe
answers in points by asking both models the same questions, made only from A's
dictionary (the ontology, no patient data):

- a **pseudo-query** per drawn concept: its mention is one of the concept's other names
  when it has any, else its preferred name with one word left out (one letter, for a
  single word), lower-cased, as a mention would often write it; no context;
- its candidates come from A's own candidate generator over A's dictionary (the task's
  channel when it needs nothing but the dictionary, ``tfidf`` or ``bm25``; TF-IDF
  otherwise), C of them as A's queries had, the gold always among them;
- the gold is the concept.

The estimate is the drop of accuracy@1 on these queries, old model against new, in
points, times a calibration constant ``scale`` (eq. D1)::

    drop = scale · 100 · (acc_old − acc_new)                                   (D1)

The share of queries whose top-1 candidate changed (``disagreement``) and the share the
old model linked right and the new one wrong (``forgotten``) are reported beside it.
Everything is drawn from one seeded RNG: equal inputs give equal estimates.

Measured (``benchmarks/drift_calibration.py``, the wider CNN on PUBLIC-3-small, two old
tasks): the estimate is **not calibrated**, and ``DRIFT_SCALE`` stays 1. Within one old
task, ``disagreement`` ranks the runs by their real drop (Spearman ρ ≈ 0.9, on dev and
on test); across old tasks neither statistic does, and the signed drop (D1) can have
the wrong sign: where the new task teaches dictionary-like names (cadec → medmentions),
the new model links more of cadec's name-like pseudo-queries while it loses the
colloquial mentions cadec's real queries are. Read it as a relative signal between runs
from one old model, not as points.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kfacel.data.records import Concept, LinkingExample
from kfacel.linking.evaluate import gold_ranks, predict
from kfacel.linking.linker import Linker
from kfacel.retrieval.candidates import make_candidates
from kfacel.retrieval.methods import build_generator
from kfacel.retrieval.ontology import read_ontology
from kfacel.tasks.directory import Task

DRIFT_SCALE = 1.0
"""The calibration constant of eq. D1: 1, since no constant fitted on dev made the
estimate agree with the measured drop (module doc)."""
PROBE_CHANNELS = ("tfidf", "bm25")
"""Candidate channels the probe rebuilds from the dictionary alone."""


@dataclass(frozen=True)
class DriftEstimate:
    """The probe's answer for one old task.

    Attributes:
        task: the old task's name.
        n: pseudo-queries asked.
        accuracy_old: the old model's accuracy@1 on them (percent).
        accuracy_new: the new model's (percent).
        disagreement: share of queries whose top-1 candidate differs (percent).
        forgotten: share the old model links right and the new one wrong (percent).
        scale: the calibration constant of eq. D1.
    """

    task: str
    n: int
    accuracy_old: float
    accuracy_new: float
    disagreement: float
    forgotten: float
    scale: float = DRIFT_SCALE

    @property
    def drop(self) -> float:
        """The estimated drop of the old task's accuracy, in points (eq. D1)."""
        return self.scale * (self.accuracy_old - self.accuracy_new)

    def to_json(self) -> dict[str, Any]:
        """The fields and ``drop``, as plain numbers."""
        return {
            "task": self.task,
            "drop": self.drop,
            "n": self.n,
            "accuracy_old": self.accuracy_old,
            "accuracy_new": self.accuracy_new,
            "disagreement": self.disagreement,
            "forgotten": self.forgotten,
            "scale": self.scale,
        }


def drift_probe(
    old: Linker,
    new: Linker,
    task: Task,
    *,
    n: int = 2000,
    seed: int = 0,
    scale: float = DRIFT_SCALE,
    batch_size: int = 256,
    device: str = "cpu",
) -> DriftEstimate:
    """Estimate how many points of ``task``'s accuracy ``new`` lost against ``old``.

    Reads only ``task``'s dictionary and its candidate settings (``task.json``), never
    its queries.

    Args:
        old: the model that finished ``task`` (θ*).
        new: the model after training on a later task.
        task: the old task (its dictionary file must exist).
        n: pseudo-queries (concepts drawn with replacement beyond the dictionary's size).
        seed: seeds the draw of concepts, mentions and candidate fillers.
        scale: the calibration constant of eq. D1.
        batch_size: queries per forward.
        device: where the forwards run (each model is moved back to the CPU).

    Raises:
        ValueError: ``n`` < 1, or a task without a dictionary file.
    """
    if task.dictionary is None:
        raise ValueError(
            f"{task.path}: the task has no {task.path.name}/dictionary.jsonl.gz; the "
            "drift probe reads the old task's dictionary"
        )
    settings = task.info.get("candidates", {})
    queries = pseudo_queries(
        read_ontology(task.dictionary),
        n,
        seed=seed,
        method=str(settings.get("method", "tfidf")),
        num_candidates=int(settings.get("num_candidates", 10)),
    )
    right_old, top_old = _answers(old, queries, batch_size, device)
    right_new, top_new = _answers(new, queries, batch_size, device)
    pct = 100.0 / len(queries)
    return DriftEstimate(
        task=task.name,
        n=len(queries),
        accuracy_old=pct * int(right_old.sum()),
        accuracy_new=pct * int(right_new.sum()),
        disagreement=pct * int((top_old != top_new).sum()),
        forgotten=pct * int((right_old & ~right_new).sum()),
        scale=scale,
    )


def pseudo_queries(
    concepts: Sequence[Concept],
    n: int,
    *,
    seed: int,
    method: str = "tfidf",
    num_candidates: int = 10,
) -> list[LinkingExample]:
    """``n`` queries made from a dictionary alone (module doc), deterministic in ``seed``.

    Raises:
        ValueError: ``n`` < 1, or fewer than two concepts.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 pseudo-query, got {n}")
    if len(concepts) < 2:
        raise ValueError(
            f"the dictionary has {len(concepts)} concept; the probe needs 2"
        )
    rng = random.Random(seed)
    idx = list(range(len(concepts)))
    drawn = rng.sample(idx, n) if n <= len(idx) else rng.choices(idx, k=n)
    mentions = [pseudo_mention(concepts[i], rng) for i in drawn]
    golds = [concepts[i].id for i in drawn]
    channel = method if method in PROBE_CHANNELS else "tfidf"
    lists, _, _ = make_candidates(
        build_generator(channel, concepts),
        mentions,
        golds,
        num_candidates=num_candidates,
        seed=seed,
    )
    return [
        LinkingExample(
            mention=m, left_context="", right_context="", candidates=c, gold=g
        )
        for m, c, g in zip(mentions, lists, golds, strict=True)
    ]


def pseudo_mention(concept: Concept, rng: random.Random) -> str:
    """A mention of ``concept`` that is not its preferred name, when one can be made.

    Another of its names when it has one; else its preferred name without one word
    (several words) or one letter (one word of four letters or more); lower-cased.
    """
    if len(concept.names) > 1:
        return rng.choice(concept.names[1:]).lower()
    words = concept.name.lower().split()
    if len(words) > 1:
        del words[rng.randrange(len(words))]
        return " ".join(words)
    word = words[0] if words else concept.name.lower()
    if len(word) < 4:
        return word
    cut = rng.randrange(1, len(word) - 1)  # keep the first and last letters
    return word[:cut] + word[cut + 1 :]


def _answers(
    linker: Linker, queries: Sequence[LinkingExample], batch_size: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: whether the gold ranks first (ties wrong), and the top-1's index."""
    batches = linker.batches(queries, batch_size)
    model = linker.model.to(device)
    try:
        logits = predict(model, batches, device=device)
    finally:
        model.to("cpu")
    right = [
        gold_ranks(s, b.labels, b.candidate_valid) == 1
        for s, b in zip(logits, batches, strict=True)
    ]
    return torch.cat(right), torch.cat([s.argmax(dim=1) for s in logits])
