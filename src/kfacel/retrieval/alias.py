"""The alias channel: how often the training split linked a mention string to a concept.

The counts come from the training split's :class:`~kfacel.data.aliases.AliasTable`
(kept in ``data`` because the collator's alias features read it too); a query's own
document is left out, so training queries see the table as dev and test queries do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kfacel.data.aliases import AliasTable, mention_key
from kfacel.data.records import Concept
from kfacel.retrieval.base import CandidateGenerator


class AliasGenerator(CandidateGenerator):
    """The training alias table: how often each concept was a mention string's gold.

    A concept's score is ``n(m, c)``, the number of training links of the mention's
    normalized string ``m`` to it, the query's own document left out
    (:class:`~kfacel.data.aliases.AliasTable`); unseen strings score 0 everywhere.
    """

    method = "alias"
    uses_docs = True
    ranks = True

    def __init__(self, concepts: Sequence[Concept], aliases: AliasTable) -> None:
        """Look ``aliases``' gold ids up in ``concepts`` (unknown ids are ignored)."""
        super().__init__(concepts)
        self.aliases = aliases

    def counts(self, keys: list[str], docs: list[str | None]) -> np.ndarray:
        """``n(m, c)`` ``[u, concepts]`` of normalized mentions in their documents."""
        scores = np.zeros((len(keys), len(self.concepts)), dtype=np.float32)
        for i, (key, doc) in enumerate(zip(keys, docs, strict=True)):
            for concept_id, n in self.aliases.links_of(mention_key(key), doc).items():
                j = self.index_of(concept_id)
                if j is not None:
                    scores[i, j] += n
        return scores

    def _concept_scores(
        self, keys: list[str], docs: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        names = np.zeros((len(keys), len(self._names)), dtype=np.float32)
        return self.counts(keys, docs), names  # no name is closer than another
