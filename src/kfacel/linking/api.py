"""The Python linking API: ``kfacel.Linker.load(model_dir).link(text, mentions)``.

``Linker.load`` reads a model directory once: the ranker, the candidate generator the
model was trained with (method, C, context width, synonyms, the alias table and
fine-tuned retriever it recorded) built over the dictionaries it learned (the union of
its ontologies by default, ``retrieval.ontology``; one by name; or a dictionary file it
was trained with). ``link`` and ``link_batch`` return frozen ``LinkResult``s, each
mention's candidates best first as ``LinkedConcept``s that name their ontology.

``kfacel link`` and the spaCy component (``kfacel.spacy``) are thin callers of this
class, so the three rank alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfacel.linking.link import MentionQuery, Ranked, link
from kfacel.linking.linker import RETRIEVAL_FILE, load_linker
from kfacel.linking.linker import Linker as Ranker
from kfacel.linking.ontologies import search_dictionary
from kfacel.retrieval.base import CandidateGenerator
from kfacel.retrieval.dense import SentenceEncoder
from kfacel.retrieval.methods import RETRIEVAL_METHODS, build_generator
from kfacel.retrieval.ontology import Union
from kfacel.tasks.directory import ranker_reads_retrieval_text

logger = logging.getLogger(__name__)

Mention = str | tuple[int, int]
"""A mention to link: its text (first occurrence in the document) or its character
span ``(start, end)``."""


@dataclass(frozen=True)
class LinkedConcept:
    """One candidate concept of a mention.

    Attributes:
        concept_id: the id as its dictionary spells it.
        name: the concept's preferred name.
        score: the ranker's score (a logit: higher is better; comparable within one
            mention's candidates).
        ontology: the ontology (dictionary) it comes from, as the model names it.
        synonym: the concept's name the ranker read, when not the preferred name.
    """

    concept_id: str
    name: str
    score: float
    ontology: str
    synonym: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``kfacel link`` output record of the concept (score to 4 decimals)."""
        out = {"id": self.concept_id, "name": self.name, "score": round(self.score, 4)}
        out["ontology"] = self.ontology
        return out | ({"synonym": self.synonym} if self.synonym else {})


@dataclass(frozen=True)
class LinkResult:
    """A mention, where it is in its text, and its candidate concepts best first.

    ``candidates`` is empty when retrieval found no concept sharing anything with the
    mention.
    """

    mention: str
    start: int
    end: int
    candidates: tuple[LinkedConcept, ...]

    @property
    def best(self) -> LinkedConcept | None:
        """The top candidate (None: none)."""
        return self.candidates[0] if self.candidates else None


class Linker:
    """A trained linker ready to link mentions (build it with :meth:`Linker.load`).

    Attributes:
        model_dir: the model directory.
        ontologies: the ontologies searched, in order.
        top: candidates kept per mention (None: all C the generator proposes).
    """

    def __init__(
        self,
        ranker: Ranker,
        generator: CandidateGenerator,
        concepts: Union,
        *,
        model_dir: Path,
        top: int | None = 5,
        device: str = "cpu",
        precision: str = "auto",
        batch_size: int = 64,
    ) -> None:
        """Use :meth:`load`; this wires parts that it builds."""
        if top is not None and top < 1:
            raise ValueError(f"top must be a positive integer or None, got {top!r}")
        self.ranker = ranker
        self.generator = generator
        self.concepts = concepts
        self.model_dir = model_dir
        self.top = top
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.ontologies = tuple(dict.fromkeys(o for o, _ in concepts.origin.values()))
        task = ranker.meta.get("task", {})
        self._cands = task.get("candidates", {})
        self._context_words = int(task.get("context_words", 10))

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        ontology: str | None = None,
        dictionary: str | Path | None = None,
        device: str = "cpu",
        top: int | None = 5,
        precision: str = "auto",
        batch_size: int = 64,
        progress: bool = False,
        warn: Callable[[str], None] = logger.warning,
    ) -> Linker:
        """The linker saved in ``model_dir`` (``kfacel train``'s ``--out``).

        Args:
            model_dir: the model directory.
            ontology: search this ontology alone (by the name the model gives it);
                default: every ontology the model learned.
            dictionary: search this dictionary file (TSV or MEDIC); it must be one the
                model was trained with. A model trained by an older kfacel keeps no
                dictionary and needs it.
            device: where the ranker runs (``"cpu"``, ``"cuda"``).
            top: candidates per mention (None: all the generator proposes).
            precision: the ranker's arithmetic (``auto`` or ``bfloat16``).
            batch_size: mentions per forward pass.
            progress: a progress bar while dense retrieval embeds names.
            warn: receives each warning line (default: this module's logger).

        Raises:
            ValueError: an unknown ontology, a dictionary the model did not learn, a
                retrieval model without its alias table, or a bad model directory.
        """
        where = str(model_dir)
        ranker = load_linker(model_dir)
        concepts = search_dictionary(
            ranker.ontologies,
            ontology=ontology,
            dictionary=dictionary,
            where=where,
            warn=warn,
        )
        method = ranker.meta.get("task", {}).get("candidates", {}).get("method")
        method = method or "tfidf"
        aliases = ranker.retrieval_aliases()
        if method in RETRIEVAL_METHODS and aliases is None:
            raise ValueError(
                f"{where}: {RETRIEVAL_FILE} is missing; {method} retrieval needs the "
                "training alias table"
            )
        encoder = SentenceEncoder(ranker.retriever) if ranker.retriever else None
        generator = build_generator(
            method,
            concepts.concepts,
            aliases=aliases,
            encoder=encoder,
            progress=progress,
        )
        ranker.model.to(device)
        return cls(
            ranker, generator, concepts, model_dir=Path(model_dir), top=top,
            device=device, precision=precision, batch_size=batch_size,
        )  # fmt: skip

    def rank(self, queries: Sequence[MentionQuery]) -> list[list[LinkedConcept]]:
        """Every candidate of each query, best first (``kfacel link``'s path).

        An empty list: the generator found no candidate for that query.
        """
        if not queries:
            return []
        ranked = link(
            self.ranker,
            self.generator,
            queries,
            num_candidates=int(self._cands.get("num_candidates", 10)),
            context_words=self._context_words,
            synonyms=bool(self._cands.get("synonyms", False)),  # older: preferred names
            as_retrieved=ranker_reads_retrieval_text(self._cands),  # older: as written
            batch_size=self.batch_size,
            precision=self.precision,
            device=self.device,
        )
        return [[self._concept(r) for r in row] for row in ranked]

    def link(
        self, text: str, mentions: Sequence[Mention], *, top: int | None = None
    ) -> list[LinkResult]:
        """Link each mention of ``text``; results in the order of ``mentions``.

        Args:
            text: the document (or sentence) the mentions are in.
            mentions: mention strings (each at its first occurrence in ``text``) or
                character spans ``(start, end)``.
            top: candidates per mention (default: the linker's ``top``).

        Raises:
            ValueError: a mention not in the text, a span outside it, or a mention
                with no letter or digit.
        """
        return self.link_batch([(text, mentions)], top=top)[0]

    def link_batch(
        self,
        items: Iterable[tuple[str, Sequence[Mention]]],
        *,
        top: int | None = None,
    ) -> list[list[LinkResult]]:
        """:meth:`link` for many ``(text, mentions)`` pairs, ranked in shared batches."""
        per_item = [[query(text, m) for m in mentions] for text, mentions in items]
        flat = [q for qs in per_item for q in qs]
        ranked = iter(self.rank(flat))
        keep = self.top if top is None else top
        out = []
        for queries in per_item:
            results = []
            for q in queries:
                start, end = q.span()
                found = next(ranked)
                cands = tuple(found if keep is None else found[:keep])
                results.append(LinkResult(q.mention, start, end, cands))
            out.append(results)
        return out

    def _concept(self, r: Ranked) -> LinkedConcept:
        ontology, ident = self.concepts.source(r.id)
        return LinkedConcept(ident, r.name, r.score, ontology, r.synonym)


def query(text: str, mention: Mention) -> MentionQuery:
    """The query of ``mention`` (a string or a ``(start, end)`` span) in ``text``.

    >>> query("high fever", (5, 10))
    MentionQuery(text='high fever', mention='fever', start=5)

    Raises:
        ValueError: a span outside the text or empty, a mention not in the text.
    """
    if isinstance(mention, str):
        q = MentionQuery(text, mention)
    else:
        start, end = mention
        if not (isinstance(start, int) and isinstance(end, int)):
            raise ValueError(f"span {mention!r}: expected two integers")
        if not 0 <= start < end <= len(text):
            raise ValueError(
                f"span {mention!r} is not inside the text ({len(text)} characters)"
            )
        q = MentionQuery(text, text[start:end], start)
    q.span()
    return q
