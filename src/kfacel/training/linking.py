"""Linking raw mentions: candidates from the task's generator, ranked by a linker.

The generator (method and C recorded in the model directory by ``fit_task``) proposes
the C concepts whose names are closest to the mention, each with its closest synonym
when the task was built that way; the ranker scores them in the mention's context. No
gold is needed: the queries carry a placeholder gold (the first candidate) that nothing
reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kfacel.data.candidates import CandidateGenerator
from kfacel.data.readers import text_lines
from kfacel.data.records import LinkingExample, has_letter_or_digit
from kfacel.data.tasks import context, retrieval_text
from kfacel.training.evaluate import predict
from kfacel.training.pipeline import Linker


@dataclass(frozen=True)
class MentionQuery:
    """A mention to link: its text and where it sits in its document text.

    Raises:
        ValueError: when ``text`` is not a string, ``mention`` not a string with a
            letter or digit, or ``start`` not a non-negative integer (or None).
    """

    text: str
    mention: str
    start: int | None = None

    def __post_init__(self) -> None:
        """Refuse values a JSON line could smuggle in (null, numbers, NaN, "10")."""
        if not isinstance(self.text, str):
            raise ValueError(f"'text' must be a string, got {self.text!r}")
        if not isinstance(self.mention, str) or not self.mention.strip():
            raise ValueError(f"'mention' must be non-blank text, got {self.mention!r}")
        if not has_letter_or_digit(self.mention):  # as dictionary names
            raise ValueError(
                f"'mention' {self.mention!r} has no letter or digit: nothing to link"
            )
        start = self.start
        if start is not None and (
            not isinstance(start, int) or isinstance(start, bool) or start < 0
        ):
            raise ValueError(f"'start' must be an integer ≥ 0, got {start!r}")

    def span(self) -> tuple[int, int]:
        """Character span of the mention (first occurrence when ``start`` is None).

        Raises:
            ValueError: when the mention is not in the text.
        """
        start = self.text.find(self.mention) if self.start is None else self.start
        if start < 0 or self.text[start : start + len(self.mention)] != self.mention:
            raise ValueError(f"mention {self.mention!r} is not in the text")
        return start, start + len(self.mention)


def read_queries(path: Path | str) -> list[MentionQuery]:
    """The mentions of a JSONL file, one ``{"text", "mention"[, "start"]}`` a line.

    Blank lines are skipped; a UTF-8 BOM is read as one.

    Raises:
        ValueError: naming file and line of a line that is not such an object, whose
            values have the wrong type (a null or blank mention, ``"start": "10"``, a
            NaN text), or whose mention is not in its text; or when there is none.
    """
    path = Path(path)
    out = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object")
            missing = [k for k in ("text", "mention") if k not in obj]
            if missing:
                raise ValueError(f"missing field {missing[0]!r}")
            query = MentionQuery(obj["text"], obj["mention"], obj.get("start"))
            query.span()
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{lineno}: {exc}") from None
        out.append(query)
    if not out:
        raise ValueError(f"{path}: no mention to link")
    return out


@dataclass(frozen=True)
class Ranked:
    """One ranked concept: id, preferred name, ranker score, generator score.

    ``synonym`` is the concept's name closest to the mention that the ranker read,
    when it is not the preferred name.
    """

    id: str
    name: str
    score: float
    generator_score: float
    synonym: str | None = None


def link(
    linker: Linker,
    generator: CandidateGenerator,
    queries: Sequence[MentionQuery],
    *,
    num_candidates: int,
    context_words: int,
    synonyms: bool = True,
    as_retrieved: bool = False,
    batch_size: int = 64,
    precision: str = "auto",
) -> list[list[Ranked]]:
    """The generator's candidates of each mention, best first by the ranker.

    Args:
        linker: the trained linker.
        generator: candidate generator over the dictionary.
        queries: mentions in their texts.
        num_candidates: C, as in training.
        context_words: K words of context each side, as in training.
        synonyms: candidates carry their closest synonym, as in training (a task's
            ``candidates.synonyms``); False: preferred names only.
        as_retrieved: the ranker reads the mention as retrieval read it (an
            abbreviation defined in its text as its definition), as in training (a
            task's ``candidates.ranker_reads``); False: the mention as written.
        batch_size: queries per forward pass.
        precision: the ranker's arithmetic (``training.precision``: ``bfloat16``
            autocast is faster on CPUs with bfloat16 matrix units).

    Returns:
        One list of ``Ranked`` per query, highest score first.
    """
    texts = [retrieval_text(generator, q.mention, q.text) for q in queries]
    found = generator.search(texts, num_candidates)
    examples = []
    for q, text, hits in zip(queries, texts, found, strict=True):
        if not hits:
            raise ValueError(f"no candidate found for {q.mention!r}")
        left, right = context(q.text, [q.span()], context_words)
        cands = tuple(c if synonyms else replace(c, synonym=None) for c, _ in hits)
        read = text if as_retrieved else q.mention
        examples.append(LinkingExample(read, left, right, cands, cands[0].id))
    batches = linker.batches(examples, batch_size)
    logits = torch.cat(predict(linker.model, batches, precision=precision)).float()
    out = []
    for row, hits, ex in zip(logits.tolist(), found, examples, strict=True):
        ranked = [
            Ranked(c.id, c.name, s, g, c.synonym)
            for c, s, (_, g) in zip(ex.candidates, row, hits, strict=True)
        ]
        out.append(sorted(ranked, key=lambda r: -r.score))
    return out
