"""The retrieval methods by name: what ``--candidates`` chooses and how each is built.

``tfidf`` and ``bm25`` are the paper's channels, which insert a gold they missed
(benchmark accuracy); ``alias`` and ``fused`` read the training alias table, and a task
built with one is trained on what retrieval returns (``tasks.prepare.prepare_task``).
``dense`` and ``fused`` embed names with a sentence encoder (MiniLM as shipped, or a
retriever fine-tuned by ``retrieval.finetune``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kfacel.data.aliases import AliasTable
from kfacel.data.records import Concept
from kfacel.retrieval.alias import AliasGenerator
from kfacel.retrieval.ann import IndexSettings
from kfacel.retrieval.base import CandidateGenerator
from kfacel.retrieval.bm25 import BM25Generator
from kfacel.retrieval.dense import DenseGenerator, SentenceEncoder
from kfacel.retrieval.fusion import FusedGenerator
from kfacel.retrieval.tfidf import TfidfGenerator

METHODS = ("tfidf", "bm25", "dense", "alias", "fused")
RETRIEVAL_METHODS = ("alias", "fused")
"""Methods that read the training alias table: a task built with one is trained on
what retrieval returns (see ``tasks.prepare.prepare_task``)."""


def build_generator(
    method: str,
    concepts: Sequence[Concept],
    *,
    aliases: AliasTable | None = None,
    encoder: SentenceEncoder | None = None,
    progress: bool = False,
    index: IndexSettings | None = None,
) -> CandidateGenerator:
    """A candidate generator over ``concepts`` (one of :data:`METHODS`).

    Args:
        method: ``"tfidf"``, ``"bm25"``, ``"dense"``, ``"alias"`` or ``"fused"``
            (alias table, then TF-IDF and dense fused; eq. R1).
        concepts: the dictionary.
        aliases: the training links (needed by ``alias``; optional for ``fused``).
        encoder: the sentence encoder of ``dense`` and ``fused`` (default MiniLM).
        progress: a progress bar while names are embedded.
        index: the size rule and the approximate indexes' parameters (default
            ``IndexSettings.from_env()``: exact search below a million names; from
            there on, HNSW for the dense channel and impact-ordered postings for
            TF-IDF).

    Raises:
        ValueError: for an unknown method, an empty dictionary, a repeated id, or
            ``alias`` without an alias table.
    """
    if method == "tfidf":
        return TfidfGenerator(concepts, settings=index)
    if method == "bm25":
        return BM25Generator(concepts)
    if method == "dense":
        return DenseGenerator(concepts, encoder, progress=progress, settings=index)
    if method == "alias":
        if aliases is None:
            raise ValueError("the alias generator needs the training alias table")
        return AliasGenerator(concepts, aliases)
    if method == "fused":
        channels = [
            TfidfGenerator(concepts, settings=index),
            DenseGenerator(concepts, encoder, progress=progress, settings=index),
        ]
        alias = AliasGenerator(concepts, aliases) if aliases is not None else None
        return FusedGenerator(concepts, channels, alias)
    raise ValueError(f"unknown candidate method {method!r}; choose from {METHODS}")
