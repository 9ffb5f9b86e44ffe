"""Shared vocabulary of kfacel: names every layer uses, and no logic beyond moving tensors."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Self

from torch import Tensor

ParamDict = dict[str, Tensor]
"""Parameter name (as in ``model.named_parameters()``) to tensor."""


class NonFiniteCurvatureError(FloatingPointError, ValueError):
    """A Fisher statistic is NaN or infinite; the message names the layer or parameter.

    A ``FloatingPointError`` like a non-finite loss (an experiment fails the one cell,
    not the run) and a ``ValueError`` for callers that catch bad values.
    """


class FisherKind(StrEnum):
    """Which labels the per-example gradients of a Fisher are taken at (conventions K4)."""

    EMPIRICAL = "empirical"
    """The gold label: the empirical Fisher, the paper's eq. (3)."""
    SAMPLED = "sampled"
    """One label drawn from the model's softmax per example (Monte Carlo true Fisher)."""
    EXACT = "exact"
    """Every label, weighted by its probability under the model (true Fisher)."""


class ConsolidationMethod(StrEnum):
    """What a finished task leaves behind, and so which penalty can read it."""

    KFAC = "kfac"
    """Anchor and Kronecker-factored Fisher: the KFC penalty."""
    EWC = "ewc"
    """Anchor and diagonal Fisher: diagonal EWC."""
    L2 = "l2"
    """Anchor only: L2 to the old weights."""


class PenaltyKind(StrEnum):
    """The penalty an update trains with: none, or one per consolidation method."""

    NONE = "none"
    L2 = "l2"
    EWC = "ewc"
    KFAC = "kfac"


FISHER_PENALTIES = (PenaltyKind.EWC, PenaltyKind.KFAC)
"""Penalties with a Fisher, so with a predicted loss rise (and a forgetting budget)."""


class KFACApprox(StrEnum):
    """How K-FAC treats the uses of a layer within one example (conventions K5, K8)."""

    EXPAND = "expand"
    """Every use (position, candidate, repeated call) as an independent example (K5)."""
    REDUCE = "reduce"
    """Uses aggregated per example: inputs averaged, output gradients summed (K8)."""


@dataclass(frozen=True)
class Batch:
    """Tensors of N entity-linking queries with C candidates each (index legend n, c).

    Attributes:
        mention_ids: ``[N, L]`` token ids of the mention in its context, mention marked.
        mention_mask: ``[N, L]`` bool, True at real (non-padding) tokens.
        candidate_ids: ``[N, C, Lc]`` token ids of each candidate's name.
        candidate_mask: ``[N, C, Lc]`` bool, True at real tokens.
        candidate_valid: ``[N, C]`` bool, False for padding candidates (scored ``-inf``).
        labels: ``[N]`` index of the gold candidate.
        features: ``[N, C, F]`` optional pairwise string-similarity features.
        candidate_types: ``[N, C]`` optional semantic-type ids of the candidates, from
            1 (0 unknown or missing).
    """

    mention_ids: Tensor
    mention_mask: Tensor
    candidate_ids: Tensor
    candidate_mask: Tensor
    candidate_valid: Tensor
    labels: Tensor
    features: Tensor | None = None
    candidate_types: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: object, non_blocking: bool = False) -> Self:
        """Return a copy with every tensor moved to ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return replace(self, **moved)


STATES_DIR = "consolidation"
"""The folder of a model directory (and of a retriever checkpoint) that holds its
consolidation states: written by ``kfacel.consolidation.store``, known to the model
directory's checks in ``kfacel.models.registry``."""
