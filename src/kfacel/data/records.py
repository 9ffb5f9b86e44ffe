"""Plain records from readers to candidate generation to task files; no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Concept:
    """A concept of an ontology: its id, its names (first is preferred), its type.

    ``alt_ids`` are further ids of the same concept (MEDIC lists several per line); a
    corpus that uses one of them is linked to ``id``.
    """

    id: str
    names: tuple[str, ...]
    semantic_type: str | None = None
    alt_ids: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The preferred name."""
        return self.names[0]


@dataclass(frozen=True)
class Mention:
    """An annotated mention in a document, with the concept ids it is linked to.

    ``spans`` are character offsets into ``text`` (several for a discontiguous mention);
    ``concept_ids`` holds more than one id for a composite mention.
    """

    doc_id: str
    text: str
    spans: tuple[tuple[int, int], ...]
    surface: str
    concept_ids: tuple[str, ...]
    semantic_type: str | None = None
    source: str = ""
    line: int = 0


@dataclass(frozen=True)
class Candidate:
    """One candidate concept of a query, as it is shown to the ranker.

    ``name`` is the concept's preferred name; ``synonym`` the concept's name most
    similar to the query's mention by the generator's score, when that is not the
    preferred name (BioSyn-style: a concept matches through its best synonym). The
    ranker reads ``text``.
    """

    id: str
    name: str
    semantic_type: str | None = None
    synonym: str | None = None
    rank: int | None = None
    """1-based rank of the concept in the retrieval that proposed it (``fused``,
    ``alias``, ``dense`` tasks and ``link``); None: not ranked (the paper's tasks, or
    a gold that had no evidence at all)."""

    @property
    def text(self) -> str:
        """The name the ranker reads: the closest synonym, else the preferred name."""
        return self.synonym or self.name

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this candidate (``type``, ``synonym`` only when known)."""
        out: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.semantic_type is not None:
            out["type"] = self.semantic_type
        if self.synonym is not None:
            out["synonym"] = self.synonym
        if self.rank is not None:
            out["rank"] = self.rank
        return out


@dataclass(frozen=True)
class LinkingExample:
    """A query: a mention in context and its shuffled candidates, the gold among them.

    One line of a task's ``train/dev/test.jsonl``.
    """

    mention: str
    left_context: str
    right_context: str
    candidates: tuple[Candidate, ...]
    gold: str
    doc_id: str = ""
    retrieved: bool | None = None
    """Whether the candidate generator found the gold itself (``kfacel prepare``
    writes it); False: the gold was inserted. None: unknown (a task from elsewhere)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def gold_index(self) -> int:
        """Position of the gold concept among the candidates."""
        for i, c in enumerate(self.candidates):
            if c.id == self.gold:
                return i
        raise ValueError(f"gold {self.gold!r} is not among the candidates")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written as one task line."""
        out: dict[str, Any] = {
            "mention": self.mention,
            "left_context": self.left_context,
            "right_context": self.right_context,
            "candidates": [c.to_json() for c in self.candidates],
            "gold": self.gold,
        }
        if self.doc_id:
            out["doc_id"] = self.doc_id
        if self.retrieved is not None:
            out["retrieved"] = self.retrieved
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LinkingExample:
        """Parse one task line; raises ``ValueError`` naming a missing or bad field.

        A candidate id given twice is refused: the gold's twin would tie with it
        (counted wrong) and be trained as a negative.
        """
        for key in ("mention", "left_context", "right_context", "candidates", "gold"):
            if key not in obj:
                raise ValueError(f"missing field {key!r}")
        if not isinstance(obj["candidates"], list) or not obj["candidates"]:
            raise ValueError("'candidates' must be a non-empty list")
        cands = []
        for c in obj["candidates"]:
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise ValueError("each candidate needs 'id' and 'name'")
            synonym = c.get("synonym")
            if synonym is not None and not isinstance(synonym, str):
                raise ValueError(
                    f"a candidate's 'synonym' must be text, got {synonym!r}"
                )
            rank = c.get("rank")
            if rank is not None and (
                not isinstance(rank, int) or isinstance(rank, bool) or rank < 1
            ):
                raise ValueError(
                    f"a candidate's 'rank' must be an integer ≥ 1, got {rank!r}"
                )
            cands.append(
                Candidate(str(c["id"]), str(c["name"]), c.get("type"), synonym, rank)
            )
        ids = [c.id for c in cands]
        repeated = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
        if repeated is not None:  # ties would score the gold wrong, train it negative
            raise ValueError(f"candidate id {repeated!r} appears twice in the list")
        retrieved = obj.get("retrieved")
        if retrieved is not None and not isinstance(retrieved, bool):
            raise ValueError(f"'retrieved' must be true or false, got {retrieved!r}")
        known = {
            "mention",
            "left_context",
            "right_context",
            "candidates",
            "gold",
            "doc_id",
            "retrieved",
        }
        example = cls(
            mention=str(obj["mention"]),
            left_context=str(obj["left_context"]),
            right_context=str(obj["right_context"]),
            candidates=tuple(cands),
            gold=str(obj["gold"]),
            doc_id=str(obj.get("doc_id", "")),
            retrieved=retrieved,
            extra={k: v for k, v in obj.items() if k not in known},
        )
        example.gold_index  # noqa: B018 - validates that the gold is a candidate
        return example


@dataclass
class SkipReport:
    """What readers and task building left out, counted by reason.

    Readers take one as ``skips=`` and add to it while they iterate; the first place
    (``file:line``) of each reason is kept so a report can point at an example.
    """

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, where: str = "", n: int = 1) -> None:
        """Count ``n`` items skipped for ``reason``, first seen at ``where``."""
        self.counts[reason] = self.counts.get(reason, 0) + n
        if where and reason not in self.first:
            self.first[reason] = where

    def repair(self, reason: str, where: str = "", n: int = 1) -> None:
        """Count ``n`` items kept after a repair (e.g. realigned offsets)."""
        self.repaired[reason] = self.repaired.get(reason, 0) + n
        if where and reason not in self.first:
            self.first[reason] = where

    def update(self, other: SkipReport) -> None:
        """Add the counts of ``other`` to this report."""
        for reason, n in other.counts.items():
            self.add(reason, other.first.get(reason, ""), n)
        for reason, n in other.repaired.items():
            self.repair(reason, other.first.get(reason, ""), n)

    @property
    def total(self) -> int:
        """Number of items skipped for any reason."""
        return sum(self.counts.values())

    def to_json(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{"skipped"|"repaired": {reason: {"count": n, "first": "file:line"}}}``."""
        return {
            kind: {
                r: {"count": d[r], "first": self.first.get(r, "")} for r in sorted(d)
            }
            for kind, d in (("skipped", self.counts), ("repaired", self.repaired))
        }


ID_PREFIXES = ("UMLS:", "MESH:", "MSH:")
"""Prefixes dropped from concept ids, so that corpus and dictionary ids meet."""


def normalize_id(raw: str) -> str:
    """A concept id without stray spaces or a ``UMLS:``/``MESH:`` prefix.

    ``OMIM:`` is kept: OMIM numbers are bare digits that would otherwise be ambiguous.

    >>> normalize_id(" UMLS:C0011849 ")
    'C0011849'
    >>> normalize_id("MESH:D003110"), normalize_id("OMIM:164400")
    ('D003110', 'OMIM:164400')
    """
    ident = raw.strip()
    upper = ident.upper()
    for prefix in ID_PREFIXES:
        if upper.startswith(prefix):
            return ident[len(prefix) :].strip()
    if upper.startswith("OMIM:"):
        return "OMIM:" + ident[5:].strip()
    return ident


def has_letter_or_digit(text: str) -> bool:
    """Whether ``text`` has something to link or retrieve by.

    A dictionary name or a mention of only punctuation ("---", "!!") has not.

    >>> has_letter_or_digit("X"), has_letter_or_digit("(?)")
    (True, False)
    """
    return any(ch.isalnum() for ch in text)
