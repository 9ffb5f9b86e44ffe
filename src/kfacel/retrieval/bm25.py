"""The BM25 channel: Okapi BM25 of the mention's words against each name's words.

``bm25s`` with k1 = 1.5 and b = 0.75 over lower-cased word tokens; the paper's channel
for MedNorm-like data (CADEC).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from kfacel.data.records import Concept
from kfacel.retrieval.base import CandidateGenerator

_WORD = re.compile(r"\w+")


class BM25Generator(CandidateGenerator):
    """Okapi BM25 of the mention's words against each name's words."""

    method = "bm25"

    def __init__(self, concepts: Sequence[Concept]) -> None:
        """Index the word tokens of every name of ``concepts``."""
        super().__init__(concepts)
        import bm25s

        # bm25s sets its logger to DEBUG on import; let the application's level rule
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
        self._bm25 = bm25s.BM25(k1=1.5, b=0.75)
        tokens = [_WORD.findall(n) or [""] for n in self._names]
        self._bm25.index(tokens, show_progress=False)

    def _name_scores(self, mentions: list[str]) -> np.ndarray:
        out = np.zeros((len(mentions), len(self._names)), dtype=np.float32)
        for i, mention in enumerate(mentions):
            tokens = _WORD.findall(mention)
            if tokens:
                out[i] = self._bm25.get_scores(tokens)
        return out
