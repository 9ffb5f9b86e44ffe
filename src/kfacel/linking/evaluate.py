"""Ranking metrics of a ranker on batches: accuracy@1 (ties wrong), recall@k, MRR.

The rank of the gold candidate counts every other valid candidate scored at least as
high as the gold, so a tie never favours the model:
``rank = 1 + #{c ≠ gold, valid: s_c ≥ s_gold}``. Accuracy@1 is the share of rank 1,
recall@k the share of rank ≤ k, MRR the mean of 1/rank.

Where the task says which golds the candidate generator retrieved itself (``kfacel
prepare`` marks each query; the others had their gold inserted, which a linker in use
never sees), two more numbers, BLINK's normalized and unnormalized accuracy:
``accuracy_retrieved`` is accuracy@1 on the retrieved queries only, and
``accuracy_end_to_end`` the share of *all* queries that were retrieved and ranked
first, what ``kfacel link`` would score on this split.

``predict`` is the ranker's forward at inference (eval mode, each distinct name encoded
once); ``evaluate`` scores a model on batches, ``evaluate_split`` a linker on queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kfacel.data.records import LinkingExample
from kfacel.linking.linker import Linker
from kfacel.models.distinct_names import reusing_names
from kfacel.models.precision import autocast
from kfacel.types import Batch

DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class Evaluation:
    """Metrics over a set of queries, as plain floats.

    Attributes:
        accuracy: accuracy@1, ties counted as wrong.
        mrr: mean reciprocal rank of the gold.
        recall: recall@k for each k.
        n: number of queries.
        retrieved: share of queries whose gold the generator retrieved (None: unknown).
        accuracy_retrieved: accuracy@1 on those queries (None: unknown or none).
        accuracy_end_to_end: share of all queries retrieved and ranked first (None:
            unknown).
        loss: mean cross-entropy of the gold candidate (nats per query; NaN where not
            computed).
    """

    accuracy: float
    mrr: float
    recall: dict[int, float] = field(default_factory=dict)
    n: int = 0
    retrieved: float | None = None
    accuracy_retrieved: float | None = None
    accuracy_end_to_end: float | None = None
    loss: float = float("nan")

    def to_json(self) -> dict[str, float | int]:
        """``{"accuracy", "mrr", "recall@k"…, "n"}`` and the retrieved-gold numbers."""
        out: dict[str, float | int] = {"accuracy": self.accuracy, "mrr": self.mrr}
        out.update({f"recall@{k}": v for k, v in sorted(self.recall.items())})
        out["n"] = self.n
        if self.loss == self.loss:
            out["loss"] = self.loss
        for key in ("retrieved", "accuracy_retrieved", "accuracy_end_to_end"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def gold_ranks(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """Pessimistic 1-based rank of the gold for each query.

    Args:
        logits: ``[N, C]`` scores (``-inf`` at invalid candidates).
        labels: ``[N]`` gold index.
        valid: ``[N, C]`` bool, False at padding candidates (None: all valid).

    Returns:
        ``[N]`` long ranks.

    >>> gold_ranks(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([1]))
    tensor([2])
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)}")
    gold = logits.gather(1, labels[:, None])  # [N, 1]
    other = torch.ones_like(logits, dtype=torch.bool)
    other.scatter_(1, labels[:, None], False)
    if valid is not None:
        other &= valid
    beats = (logits >= gold) & other  # [N, C]
    # a NaN score or a -inf gold makes the query wrong, never right
    bad = ~torch.isfinite(gold.squeeze(1))
    ranks = 1 + beats.sum(dim=1)
    return torch.where(bad, torch.full_like(ranks, logits.shape[1]), ranks)


def metrics_from_ranks(
    ranks: Tensor, ks: Sequence[int] = DEFAULT_KS, retrieved: Tensor | None = None
) -> Evaluation:
    """Accuracy@1, MRR and recall@k of 1-based ``ranks``.

    ``retrieved`` (``[N]`` bool, optional) marks the queries whose gold the generator
    retrieved; it adds the retrieved-gold numbers (module doc).
    """
    n = int(ranks.numel())
    if n == 0:
        return Evaluation(float("nan"), float("nan"), {k: float("nan") for k in ks}, 0)
    r = ranks.double()
    top = r == 1
    extra: dict[str, Any] = {}
    if retrieved is not None:
        if retrieved.shape != ranks.shape or retrieved.dtype != torch.bool:
            raise ValueError(
                f"retrieved must be a bool tensor shaped like ranks {(n,)}, got "
                f"{retrieved.dtype} {tuple(retrieved.shape)}"
            )
        found = int(retrieved.sum())
        extra = {
            "retrieved": found / n,
            "accuracy_retrieved": float(top[retrieved].double().mean())
            if found
            else None,
            "accuracy_end_to_end": float((top & retrieved).double().mean()),
        }
    return Evaluation(
        accuracy=float(top.double().mean()),
        mrr=float((1.0 / r).mean()),
        recall={k: float((r <= k).double().mean()) for k in ks},
        n=n,
        **extra,
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> list[Tensor]:
    """Float32 logits ``[N, C]`` of each batch on the CPU, in eval mode (restored).

    Each distinct candidate name is encoded once over all the batches
    (``reusing_names``); the forward runs in ``precision`` (``models.precision``).
    """
    was_training = model.training
    model.eval()
    try:
        with reusing_names(model), autocast(device, precision, model):
            return [model(b.to(device)).float().cpu() for b in batches]
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    device: str | torch.device = "cpu",
    ks: Sequence[int] = DEFAULT_KS,
    retrieved: Sequence[bool] | None = None,
    precision: str = "auto",
) -> Evaluation:
    """Accuracy@1, MRR, recall@k and mean cross-entropy of ``model`` over ``batches``.

    ``retrieved``: per query in batch order, whether the generator retrieved its gold;
    ``precision``: the forward's arithmetic (``models.precision``).
    """
    batches = list(batches)
    logits = predict(model, batches, device=device, precision=precision)
    ranks = [
        gold_ranks(s, b.labels, b.candidate_valid)
        for s, b in zip(logits, batches, strict=True)
    ]
    flags = (
        None if retrieved is None else torch.tensor(list(retrieved), dtype=torch.bool)
    )
    result = metrics_from_ranks(
        torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long), ks, flags
    )
    total = sum(
        F.cross_entropy(s, b.labels, reduction="sum").item()
        for s, b in zip(logits, batches, strict=True)
    )
    return replace(result, loss=total / result.n if result.n else float("nan"))


def evaluate_split(
    linker: Linker,
    examples: Sequence[LinkingExample],
    *,
    batch_size: int = 128,
    device: str = "cpu",
    precision: str = "auto",
) -> Evaluation:
    """Accuracy@1, MRR and recall@k of ``linker`` on ``examples``.

    With the retrieved-gold numbers where every example says whether the generator
    retrieved its gold (``LinkingExample.retrieved``); the forward runs in ``precision``
    (``models.precision``).
    """
    flags = [ex.retrieved for ex in examples]
    retrieved = None if any(f is None for f in flags) else [bool(f) for f in flags]
    model = linker.model.to(device)
    try:
        batches = linker.batches(examples, batch_size)
        return evaluate(
            model, batches, device=device, retrieved=retrieved, precision=precision
        )
    finally:
        model.to("cpu")
