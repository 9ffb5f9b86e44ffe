"""Alias and prior statistics of a training split, for the collator's alias features.

Mentions repeat heavily within a corpus ("patients", "CDKIs", "MI"), and a linker that
remembers how each mention string was linked in training resolves many of them even when
the candidate generator ranks the gold low (about a third of MedMentions queries have a
gold the generator did not propose by itself). ``AliasTable`` keeps one row per training
query, ``(document key, normalized mention, gold id)``, and answers, for a query and a
candidate concept, counts over the training documents **other than the query's own**:

- ``n(m, c)``: how often mention ``m`` was linked to ``c``;
- ``n(m)``: how often ``m`` occurred;
- ``n(c)``: how often ``c`` was the gold (the concept's prior).

Leaving the query's own document out makes training queries see the table the way dev
and test queries (other documents) see it; otherwise a training query would always find
its own link and the model would learn to trust the table blindly. Dev, test and
``link`` queries come from documents outside training, so nothing is left out for them.
A query without a ``doc_id`` is its own document (key: its text in context). Only gold
ids of the training split are stored; nothing of dev or test is read.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from kfacel.data.records import LinkingExample

ALIAS_FORMAT = "kfacel-aliases/1"
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=200_000)
def mention_key(text: str) -> str:
    """Normalized mention: lower-case alphanumeric runs joined by one space.

    >>> mention_key("  Heart-Attack ")
    'heart attack'
    """
    return " ".join(_WORD.findall(text.lower()))


def document_key(example: LinkingExample) -> str:
    """The document a query counts in: its ``doc_id``, else the query itself."""
    if example.doc_id:
        return example.doc_id
    return f"#{example.left_context}\x00{example.mention}\x00{example.right_context}"


@dataclass(frozen=True)
class AliasCounts:
    """Counts for one (query, candidate) pair, the query's own document left out."""

    pair: int
    mention: int
    concept: int


@dataclass(frozen=True)
class _Counts:
    """``n(m, c)``, ``n(m)`` and ``n(c)`` over some links."""

    pair: Counter[tuple[str, str]]
    mention: Counter[str]
    concept: Counter[str]

    @classmethod
    def of(cls, rows: list[tuple[str, str]]) -> _Counts:
        return cls(
            Counter(rows), Counter(m for m, _ in rows), Counter(c for _, c in rows)
        )


@dataclass(frozen=True)
class AliasTable:
    """Training links ``(document key, mention key, gold id)`` and their counts.

    Attributes:
        links: one row per training query.
    """

    links: tuple[tuple[str, str, str], ...]
    _all: _Counts = field(init=False, repr=False, compare=False)
    _by_doc: dict[str, _Counts] = field(init=False, repr=False, compare=False)
    _by_mention: dict[str, Counter[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_doc: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for doc, m, c in self.links:
            by_doc[doc].append((m, c))
        rows = [(m, c) for _, m, c in self.links]
        object.__setattr__(self, "_all", _Counts.of(rows))
        object.__setattr__(
            self, "_by_doc", {doc: _Counts.of(own) for doc, own in by_doc.items()}
        )
        by_mention: dict[str, Counter[str]] = defaultdict(Counter)
        for _, m, c in self.links:
            by_mention[m][c] += 1
        object.__setattr__(self, "_by_mention", dict(by_mention))

    @classmethod
    def from_examples(cls, examples: Iterable[LinkingExample]) -> AliasTable:
        """The table of a training split's queries."""
        return cls(
            tuple((document_key(e), mention_key(e.mention), e.gold) for e in examples)
        )

    def __len__(self) -> int:
        return len(self.links)

    def counts(self, example: LinkingExample, concept_id: str) -> AliasCounts:
        """``n(m, c)``, ``n(m)``, ``n(c)`` of ``example`` and a candidate ``c``.

        Counts come from training documents other than the example's own.
        """
        m = mention_key(example.mention)
        total = self._all
        pair = total.pair[(m, concept_id)]
        mention, concept = total.mention[m], total.concept[concept_id]
        own = self._by_doc.get(document_key(example))
        if own is not None:
            pair -= own.pair[(m, concept_id)]
            mention -= own.mention[m]
            concept -= own.concept[concept_id]
        return AliasCounts(pair, mention, concept)

    def links_of(self, mention: str, doc: str | None = None) -> Counter[str]:
        """``{c: n(m, c)}`` of a normalized mention ``m``, document ``doc`` left out.

        >>> t = AliasTable((("d1", "mi", "C1"), ("d2", "mi", "C1"), ("d2", "mi", "C2")))
        >>> dict(t.links_of("mi", "d2"))
        {'C1': 1}
        """
        out = Counter(self._by_mention.get(mention, {}))
        own = self._by_doc.get(doc) if doc is not None else None
        if own is not None:
            out.subtract({c: own.pair[(mention, c)] for c in out})
        return Counter({c: n for c, n in out.items() if n > 0})

    def merged(self, other: AliasTable) -> AliasTable:
        """The links of both tables (a linker's memory after a further task)."""
        return AliasTable(self.links + other.links)

    @classmethod
    def from_mentions(cls, mentions: Iterable[tuple[str, str, str]]) -> AliasTable:
        """The table of ``(document, mention text, gold id)`` triples."""
        return cls(tuple((doc, mention_key(m), gold) for doc, m, gold in mentions))

    def to_json(self) -> dict[str, Any]:
        """``{"format", "links": [[doc, mention, id], ...]}``."""
        return {"format": ALIAS_FORMAT, "links": [list(r) for r in self.links]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AliasTable:
        """Parse ``to_json``'s object; raises ``ValueError`` on another format."""
        if obj.get("format") != ALIAS_FORMAT:
            raise ValueError(
                f"not an alias table (format {obj.get('format')!r}, "
                f"expected {ALIAS_FORMAT!r})"
            )
        return cls(tuple((str(d), str(m), str(c)) for d, m, c in obj["links"]))
