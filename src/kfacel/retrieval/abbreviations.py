"""Query text: an abbreviation defined in its document is retrieved by its definition.

Abbreviations defined in a document are found after Schwartz and Hearst (PSB 2003).

Biomedical texts define a short form once, ``"hemolytic uremic syndrome (HUS)"``, and
then use it alone; a dictionary rarely lists ``HUS``. Retrieval reads such a mention as
its definition. A definition is a parenthesized short form (1–10 characters, at most
two words, starting with a letter or digit and holding a letter) and the words before
it: at most ``min(|SF| + 5, 2·|SF|)`` of them, within the sentence. The long form is the
shortest run of those final words whose characters contain the short form's letters
and digits in order, matched right to left, the first one at the start of a word (the
algorithm of the paper). The first definition of a short form in a text wins.

:func:`retrieval_text` is what a channel is asked for a mention found in a text: the
definition for a channel that expands abbreviations (fusion), else the mention. A task
built so writes the mention as retrieval read it, so the ranker reads it too
(``tasks.directory.RANKER_READS``).
"""

from __future__ import annotations

import re
from functools import lru_cache

from kfacel.retrieval.base import CandidateGenerator

_PAREN = re.compile(r"\(([^()]{1,10})\)")
_WORD = re.compile(r"\S+")


def define_abbreviations(text: str) -> dict[str, str]:
    """``{short form: long form}`` of the definitions in ``text``.

    >>> define_abbreviations("Children with hemolytic uremic syndrome (HUS) recover.")
    {'HUS': 'hemolytic uremic syndrome'}
    >>> define_abbreviations("X-linked dilated cardiomyopathy (XLDCM) is rare.")
    {'XLDCM': 'X-linked dilated cardiomyopathy'}
    """
    out: dict[str, str] = {}
    for match in _PAREN.finditer(text):
        short = match.group(1).strip()
        if not _is_short_form(short) or short in out:
            continue
        before = re.split(r"[.;:]\s|[()]", text[: match.start()])[-1]
        words = _WORD.findall(before)
        n = len(re.sub(r"[^A-Za-z0-9]", "", short))
        window = words[-min(n + 5, 2 * n) :]
        long = _long_form(short, window)
        if long is not None:
            out[short] = long
    return out


def expand(mention: str, definitions: dict[str, str]) -> str:
    """The mention's long form when it is a short form defined in its text, else itself.

    >>> expand("HUS", {"HUS": "hemolytic uremic syndrome"})
    'hemolytic uremic syndrome'
    """
    return definitions.get(mention.strip(), mention)


def _is_short_form(text: str) -> bool:
    return (
        len(text.split()) <= 2 and text[:1].isalnum() and any(c.isalpha() for c in text)
    )


def _long_form(short: str, words: list[str]) -> str | None:
    """The shortest final run of ``words`` that spells ``short`` (Schwartz–Hearst)."""
    chars = [c.lower() for c in short if c.isalnum()]
    if not chars or not words:
        return None
    candidate = " ".join(words)
    low = candidate.lower()
    s, l = len(chars) - 1, len(low) - 1
    while s >= 0:
        c = chars[s]
        while l >= 0 and (low[l] != c or (s == 0 and l > 0 and low[l - 1].isalnum())):
            l -= 1
        if l < 0:
            return None
        s, l = s - 1, l - 1
    start = candidate.rfind(" ", 0, l + 2) + 1
    long = candidate[start:].strip()
    if long.lower() == short.lower() or len(long) <= len(short):
        return None
    return long


def retrieval_text(generator: CandidateGenerator, mention: str, text: str) -> str:
    """What ``generator`` retrieves for ``mention`` found in ``text``.

    The mention's definition when it is an abbreviation defined in ``text`` and the
    generator expands them (``CandidateGenerator.expands_abbreviations``), else the
    mention itself.
    """
    if not generator.expands_abbreviations or mention.strip() not in text:
        return mention
    return expand(mention, _definitions(text))


@lru_cache(maxsize=4096)
def _definitions(text: str) -> dict[str, str]:
    return define_abbreviations(text)
