"""Linking raw mentions: candidates from the task's generator, ranked by a linker.

The generator (method and C recorded in the model directory by ``fit_task``) proposes
the C concepts whose names are closest to the mention, each with its closest synonym
when the task was built that way; the ranker scores them in the mention's context. No
gold is needed: the queries carry a placeholder gold (the first candidate) that nothing
reads.

A query file is JSONL, one ``{"text", "mention"[, "start"]}`` object a line;
``read_query_lines`` reads every line, keeping each bad line's reason, so that a caller
can either stop at the first or report each and go on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kfacel.data.readers import text_lines
from kfacel.data.records import LinkingExample, has_letter_or_digit
from kfacel.linking.evaluate import predict
from kfacel.linking.linker import Linker
from kfacel.retrieval.abbreviations import retrieval_text
from kfacel.retrieval.base import CandidateGenerator
from kfacel.tasks.prepare import context


@dataclass(frozen=True)
class MentionQuery:
    r"""A mention to link: its text and where it sits in its document text.

    Raises:
        ValueError: when ``text`` is not a string, ``mention`` not a string with a
            letter or digit, either holds a lone surrogate (text that has no UTF-8,
            from a ``\ud800`` JSON escape or undecodable command-line bytes), or
            ``start`` is not a non-negative integer (or None).
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
        for name, value in (("text", self.text), ("mention", self.mention)):
            problem = lone_surrogate(value)
            if problem:
                raise ValueError(f"'{name}' is not valid text: {problem}")
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


def lone_surrogate(text: str) -> str | None:
    r"""Where ``text`` holds a lone surrogate (a character with no UTF-8), or None.

    >>> lone_surrogate("abc\udcff")
    'lone surrogate U+DCFF at position 3'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}"
    return None


@dataclass(frozen=True)
class QueryLine:
    """A non-blank line of a query file: its number, and its query or why it has none.

    ``line`` is None for a query that came from no file (the command line).
    """

    line: int | None
    query: MentionQuery | None
    error: str | None = None


def read_query_lines(path: Path | str) -> list[QueryLine]:
    """Every non-blank line of a JSONL query file, a bad one with its reason.

    Each line is one ``{"text", "mention"[, "start"]}`` object; ``start`` is the
    mention's character offset in ``text`` (default: its first occurrence). Blank
    lines are skipped; a UTF-8 BOM is read as one.

    Returns:
        One ``QueryLine`` per non-blank line, in file order; a line that is not such
        an object, whose values have the wrong type (a null or blank mention,
        ``"start": "10"``, a NaN text, a lone surrogate), or whose mention is not in
        its text has no query and says why in ``error``.

    Raises:
        ValueError: naming the file when it has no non-blank line, or file, line and
            offset of bytes that are not UTF-8.
    """
    path = Path(path)
    out = []
    for lineno, line in text_lines(path):
        if line.strip():
            try:
                out.append(QueryLine(lineno, _parse_query(line)))
            except ValueError as exc:  # JSONDecodeError is a ValueError
                out.append(QueryLine(lineno, None, str(exc)))
    if not out:
        raise ValueError(f"{path}: no mention to link")
    return out


def _parse_query(line: str) -> MentionQuery:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    missing = [k for k in ("text", "mention") if k not in obj]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    query = MentionQuery(obj["text"], obj["mention"], obj.get("start"))
    query.span()
    return query


def read_queries(path: Path | str) -> list[MentionQuery]:
    """The mentions of a JSONL query file (see ``read_query_lines``), all valid.

    Raises:
        ValueError: naming file and line of the first bad line, or as
            ``read_query_lines``.
    """
    out = []
    for entry in read_query_lines(path):
        if entry.query is None:
            raise ValueError(f"{path}:{entry.line}: {entry.error}")
        out.append(entry.query)
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
    device: str = "cpu",
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
        precision: the ranker's arithmetic (``models.precision``: ``bfloat16``
            autocast is faster on CPUs with bfloat16 matrix units).
        device: where the ranker runs (the model must be there already).

    Returns:
        One list of ``Ranked`` per query, highest score first; an empty list for a
        query the generator finds no candidate for (the others are still ranked).
    """
    texts = [retrieval_text(generator, q.mention, q.text) for q in queries]
    found = generator.search(texts, num_candidates)
    examples = []
    for q, text, hits in zip(queries, texts, found, strict=True):
        if hits:
            left, right = context(q.text, [q.span()], context_words)
            cands = tuple(c if synonyms else replace(c, synonym=None) for c, _ in hits)
            read = text if as_retrieved else q.mention
            examples.append(LinkingExample(read, left, right, cands, cands[0].id))
    batches = linker.batches(examples, batch_size) if examples else []
    logits = predict(
        linker.model, batches, device=device, precision=precision
    )  # [N_b, C_b] each
    rows = [row for part in logits for row in part.tolist()]  # C_b: the batch's widest
    scored = iter(zip(rows, examples, strict=True))
    out: list[list[Ranked]] = []
    for hits in found:
        if not hits:
            out.append([])
            continue
        row, ex = next(scored)
        row = row[: len(hits)]  # the rest pads to the batch's widest candidate list
        ranked = [
            Ranked(c.id, c.name, s, g, c.synonym)
            for c, s, (_, g) in zip(ex.candidates, row, hits, strict=True)
        ]
        out.append(sorted(ranked, key=lambda r: -r.score))
    return out
