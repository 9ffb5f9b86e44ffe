"""Retrieval: the channels that rank a dictionary's concepts for a mention.

One interface (``base.CandidateGenerator``) and one module per channel: ``tfidf``,
``bm25``, ``dense`` (a sentence encoder and its cached name matrix; ``ann`` its
search index, exact or HNSW by size, and ``streamed`` the matrix on disk), ``alias`` (the
training alias table) and ``fusion`` of them (eq. R1); ``methods`` builds one by name.
``candidates`` turns a channel's ranking into a task's candidate lists, and
``abbreviations`` is the query-side text step (a defined abbreviation is retrieved by
its definition). The dense retriever is fine-tuned by ``finetune`` (eq. R2) and kept
from forgetting by ``continual`` (its K-FAC state and penalized fine-tuning).

Retrieval sits above ``data`` (records, readers, the alias table) and below ``tasks``,
which prepares task directories with it.
"""

from kfacel.retrieval.abbreviations import retrieval_text
from kfacel.retrieval.ann import IndexKind, IndexSettings
from kfacel.retrieval.base import CandidateGenerator, dictionary_digest, top_k
from kfacel.retrieval.candidates import CandidateStats, make_candidates
from kfacel.retrieval.dense import NameIndex, SentenceEncoder
from kfacel.retrieval.finetune import RetrieverSettings, RetrieverStart, fine_tune
from kfacel.retrieval.methods import METHODS, RETRIEVAL_METHODS, build_generator

__all__ = [
    "METHODS",
    "RETRIEVAL_METHODS",
    "CandidateGenerator",
    "CandidateStats",
    "IndexKind",
    "IndexSettings",
    "NameIndex",
    "RetrieverSettings",
    "RetrieverStart",
    "SentenceEncoder",
    "build_generator",
    "dictionary_digest",
    "fine_tune",
    "make_candidates",
    "retrieval_text",
    "top_k",
]
