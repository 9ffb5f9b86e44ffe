"""Task directories: mentions in, shuffled candidate queries out, and back.

A task directory holds ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (one
``LinkingExample.to_json()`` a line, keys sorted, UTF-8) and ``task.json`` (name,
sources, counts, candidate method, C, context width, seed, what was skipped and why,
and the generator's recall@k and accuracy@1 per split). The directory is assembled in a
hidden temporary sibling (``.NAME.XXXX``, removed on every error path) and renamed into
place at once; equal inputs give byte-identical files. Only an empty directory or a task
directory (``task.json`` of format ``kfacel-task/…`` and nothing but the task files) is
ever replaced: :func:`check_task_out` refuses any other existing directory, and an output
that holds one of the inputs, before any work is done.

Policy for mentions that cannot become a query (counted in ``task.json``):

- a composite mention (several concept ids, e.g. NCBI's ``D003110|D009369`` or
  ``D015862+D058499``) is skipped: a query has exactly one gold;
- a mention whose gold id is not in the dictionary is skipped (no name to show).

The context of a mention is the K whitespace-separated words left of its first span and
right of its last span, within its document text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from kfacel._io import atomic_dir
from kfacel.data.abbreviations import define_abbreviations, expand
from kfacel.data.aliases import AliasTable
from kfacel.data.candidates import (
    RETRIEVAL_METHODS,
    CandidateGenerator,
    FusedGenerator,
    build_generator,
    dictionary_digest,
    make_candidates,
)
from kfacel.data.dense import RETRIEVER_STATES, SentenceEncoder
from kfacel.data.dense_training import RetrieverSettings, fine_tune, training_groups
from kfacel.data.readers.lines import read_text, text_lines
from kfacel.data.records import Concept, LinkingExample, Mention, SkipReport

SPLITS = ("train", "dev", "test")
FORMAT = "kfacel-task/1"
ALIASES_FILE = "aliases.json"
"""The training split's alias table, written for retrieval with the alias channel."""
RETRIEVER_DIR = "retriever"
"""The fine-tuned dense retriever's checkpoint, when the task was built with one."""
RETRIEVER_GROUPS_FILE = "retriever_groups.jsonl"
"""The synonym groups the retriever was fine-tuned on (dictionary names and training
mentions, one JSON list a line): what ``kfacel consolidate`` reads for its Fisher."""
TASK_FILES = (
    "train.jsonl",
    "dev.jsonl",
    "test.jsonl",
    "task.json",
    ALIASES_FILE,
    RETRIEVER_DIR,
    RETRIEVER_GROUPS_FILE,
)


@dataclass(frozen=True)
class RetrieverTuning:
    """A task's fine-tuned retriever: the encoder, its groups, where it started."""

    encoder: SentenceEncoder
    groups: Sequence[tuple[str, ...]]
    start: Path | None = None
    """The checkpoint it started from; its ``consolidation/`` states travel along."""

    def write(self, task_dir: Path) -> None:
        """``retriever/`` (with the start's states) and the groups file."""
        self.encoder.save(task_dir / RETRIEVER_DIR)
        states = self.start / RETRIEVER_STATES if self.start is not None else None
        if states is not None and states.is_dir():
            shutil.copytree(states, task_dir / RETRIEVER_DIR / RETRIEVER_STATES)
        lines = (json.dumps(list(g), ensure_ascii=False) + "\n" for g in self.groups)
        _write(task_dir / RETRIEVER_GROUPS_FILE, "".join(lines))


@dataclass(frozen=True)
class Task:
    """A loaded task directory: its name, metadata and the queries of each split."""

    name: str
    path: Path
    train: list[LinkingExample] = field(repr=False)
    dev: list[LinkingExample] = field(repr=False)
    test: list[LinkingExample] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    aliases: AliasTable | None = field(default=None, repr=False, compare=False)
    """The training links retrieval's alias channel reads (``aliases.json``)."""
    retriever: Path | None = field(default=None, repr=False, compare=False)
    """The fine-tuned dense retriever's checkpoint directory, if the task has one."""

    def split(self, name: str) -> list[LinkingExample]:
        """The queries of split ``name`` (``train``, ``dev`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose from {SPLITS}")
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def context(text: str, spans: Sequence[tuple[int, int]], k: int) -> tuple[str, str]:
    """The ``k`` words left of the first span and right of the last one.

    >>> context("a b c MENTION d e", [(6, 13)], 2)
    ('b c', 'd e')
    """
    left = text[: spans[0][0]].split()
    right = text[spans[-1][1] :].split()
    return " ".join(left[len(left) - k :] if k else []), " ".join(right[:k])


def split_by_document(
    mentions: Sequence[Mention], fractions: Sequence[float], seed: int
) -> list[list[Mention]]:
    """Split mentions into parts by document, the documents shuffled with ``seed``.

    Args:
        mentions: mentions of any number of documents.
        fractions: one share of documents per part, summing to 1.
        seed: seeds the shuffle of the sorted document ids.

    Returns:
        One list per fraction, mentions in their input order.
    """
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be non-negative and sum to 1: {fractions}"
        )
    docs = sorted({m.doc_id for m in mentions})
    order = [docs[i] for i in np.random.default_rng(seed).permutation(len(docs))]
    bounds = np.round(np.cumsum([0.0, *fractions]) * len(docs)).astype(int)
    part = {
        d: p for p in range(len(fractions)) for d in order[bounds[p] : bounds[p + 1]]
    }
    out: list[list[Mention]] = [[] for _ in fractions]
    for m in mentions:
        out[part[m.doc_id]].append(m)
    return out


def _sample(
    items: list[Mention], limit: float | None, seed: list[int]
) -> list[Mention]:
    """At most ``limit`` items (a share if a float), chosen with ``seed``, in order."""
    if limit is None:
        return items
    n = int(len(items) * limit) if isinstance(limit, float) else int(limit)
    if n >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]


def prepare_task(
    out_dir: Path | str,
    *,
    name: str,
    splits: Mapping[str, Sequence[Mention]],
    concepts: Sequence[Concept],
    method: str,
    num_candidates: int,
    context_words: int,
    seed: int,
    sources: Sequence[str] = (),
    skips: SkipReport | None = None,
    max_queries: Mapping[str, int | float] | None = None,
    synonyms: bool = True,
    progress: bool = False,
    retriever: RetrieverSettings | None = None,
) -> dict[str, Any]:
    """Build the queries of each split and write the task directory.

    Args:
        out_dir: the task directory (created; files in it are replaced).
        name: the task's name.
        splits: mentions of ``train``, ``dev`` and ``test``.
        concepts: the dictionary candidates are drawn from.
        method: candidate generator (``data.candidates.METHODS``). The paper's
            ``"tfidf"`` and ``"bm25"`` insert a gold they missed (benchmark accuracy);
            the retrieval methods ``"fused"`` and ``"alias"`` read the training
            split's alias table (written to ``aliases.json``), leave training queries
            whose gold they missed out of ``train.jsonl`` (counted), and mark dev and
            test queries with an inserted gold as not retrieved (end-to-end accuracy).
        num_candidates: C, candidates per query (gold included).
        context_words: K, words of context each side.
        seed: seeds sampling, filler candidates and shuffles.
        sources: input files, recorded in ``task.json``.
        skips: what the readers skipped; the task's own skips are added to it.
        max_queries: per split, a cap (int) or a share (float) of the usable queries,
            sampled with ``seed``.
        synonyms: give each candidate its name closest to the mention (recorded as
            ``candidates.synonyms``); False: preferred names only.
        progress: a progress bar while dense retrieval embeds the dictionary.
        retriever: fine-tune the dense retriever of ``"dense"``/``"fused"`` on the
            dictionary's synonyms and the training split's mention → concept links
            first (``dense_training``; written to ``retriever/``); None or 0 epochs:
            MiniLM as shipped.

    Returns:
        The contents of ``task.json``.

    Raises:
        ValueError: when a split is missing or has no usable query.
    """
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"task {name!r}: missing splits {missing}")
    skips = skips if skips is not None else SkipReport()
    retrieval = method in RETRIEVAL_METHODS
    links = _training_links(splits["train"], concepts)
    aliases = AliasTable.from_mentions(links) if retrieval else None
    pairs = [(mention, concept_id) for _, mention, concept_id in links]
    tuned, done = _retriever(method, concepts, retriever, pairs, progress)
    encoder = tuned.encoder if tuned is not None else None
    generator = build_generator(
        method, concepts, aliases=aliases, encoder=encoder, progress=progress
    )
    candidates = {
        "method": method,
        "num_candidates": min(num_candidates, len(concepts)),
        "dictionary_size": len(concepts),
        "dictionary_sha256": dictionary_digest(concepts),
        "synonyms": synonyms,
        "train_missed": "drop" if retrieval else "insert",
        "ranker_reads": RANKER_READS,
    }
    info: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "sources": [str(s) for s in sources],
        "candidates": candidates | ({"retriever": done} if done else {}),
        "context_words": context_words,
        "seed": seed,
        "counts": {},
        "generator": {},
    }
    examples: dict[str, list[LinkingExample]] = {}
    for i, split in enumerate(SPLITS):
        usable = _usable(splits[split], generator, skips)
        usable = _sample(usable, (max_queries or {}).get(split), [seed, i, 1])
        if not usable:
            raise ValueError(
                f"task {name!r}: split {split!r} has no usable mention "
                f"({len(splits[split])} read; skipped: {skips.counts})"
            )
        asked = _Retrieval.of(generator, usable)
        queries, stats = _queries(
            usable, asked, generator, num_candidates, [seed, i], synonyms, context_words
        )
        counts = {"mentions": len(splits[split]), "queries": len(queries)}
        counts["documents"] = len({m.doc_id for m in usable})
        if retrieval and split == "train":
            # the ranker learns from what retrieval returns: a gold it missed would
            # teach that a dissimilar candidate can be gold (issue 11)
            kept = [q for q in queries if q.retrieved]
            counts |= {"dropped_not_retrieved": len(queries) - len(kept)}
            counts["queries"], queries = len(kept), kept
        examples[split] = queries
        info["counts"][split] = counts
        info["generator"][split] = stats.to_json()
        if isinstance(generator, FusedGenerator):
            info.setdefault("channels", {})[split] = _channel_stats(
                generator, asked, num_candidates, [seed, i]
            )
    info["skipped"] = skips.to_json()
    write_task(out_dir, examples, info, aliases=aliases, retriever=tuned)
    return info


def _training_links(
    train: Sequence[Mention], concepts: Sequence[Concept]
) -> list[tuple[str, str, str]]:
    """``(document, mention, concept id)`` of each known single-concept mention."""
    known = CandidateGenerator(concepts)  # only to look ids up
    return [
        (m.doc_id, m.surface, m.concept_ids[0])
        for m in train
        if len(m.concept_ids) == 1 and known.index_of(m.concept_ids[0]) is not None
    ]


def _retriever(
    method: str,
    concepts: Sequence[Concept],
    settings: RetrieverSettings | None,
    links: Sequence[tuple[str, str]],
    progress: bool,
) -> tuple[RetrieverTuning | None, dict[str, Any] | None]:
    """The fine-tuned retriever of a dense method and what was done, or (None, None).

    ``links``: the training split's ``(mention, concept id)`` pairs (never dev/test).
    The encoder starts from ``settings.start``'s checkpoint when given.
    """
    if settings is None or settings.epochs <= 0 or method not in ("dense", "fused"):
        return None, None
    start = settings.start.checkpoint if settings.start is not None else None
    encoder = SentenceEncoder(start)
    done = fine_tune(encoder, concepts, settings, mentions=links, progress=progress)
    groups = training_groups(concepts, settings, links)
    return RetrieverTuning(encoder, groups, start), {**settings.to_json(), **done}


def retriever_groups(task: Task) -> list[tuple[str, ...]]:
    """The synonym groups a task's retriever was fine-tuned on (``prepare_task``).

    Raises:
        FileNotFoundError: the task was built without a fine-tuned retriever.
        ValueError: naming the file and line of a malformed group.
    """
    path = task.path / RETRIEVER_GROUPS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; the task was built without a fine-tuned retriever "
            "(kfacel prepare --retriever-epochs)"
        )
    groups = []
    for lineno, raw in text_lines(path):
        try:
            group = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
        if not (isinstance(group, list) and len(group) >= 2):
            raise ValueError(f"{path}:{lineno}: expected a list of two texts or more")
        groups.append(tuple(str(t) for t in group))
    return groups


def retrieval_text(generator: CandidateGenerator, mention: str, text: str) -> str:
    """What ``generator`` retrieves for ``mention`` found in ``text``.

    The mention's definition when it is an abbreviation defined in ``text`` and the
    generator expands them (``CandidateGenerator.expands_abbreviations``), else the
    mention itself.
    """
    if not generator.expands_abbreviations or mention.strip() not in text:
        return mention
    return expand(mention, _definitions(text))


RANKER_READS = "retrieval_text"
"""``task.json``'s ``candidates.ranker_reads``: a query's mention is written as retrieval
read it (``retrieval_text``: an abbreviation defined in its document as its definition),
so the ranker and ``kfacel link`` read what retrieval read. Tasks without the key (older
ones) hold the mention as written."""


def ranker_reads_retrieval_text(candidates: Mapping[str, Any]) -> bool:
    """Whether a task's (or model's) ``candidates`` settings hold mentions as retrieved."""
    return candidates.get("ranker_reads") == RANKER_READS


@lru_cache(maxsize=4096)
def _definitions(text: str) -> dict[str, str]:
    return define_abbreviations(text)


@dataclass(frozen=True)
class _Retrieval:
    """What retrieval is asked for one split's queries, in query order.

    The texts (abbreviations read as their definitions where the generator does so),
    the gold ids and the documents.
    """

    texts: list[str]
    golds: list[str]
    docs: list[str]

    @classmethod
    def of(cls, generator: CandidateGenerator, usable: Sequence[Mention]) -> _Retrieval:
        """The queries of ``usable`` mentions as ``generator`` reads them."""
        return cls(
            [retrieval_text(generator, m.surface, m.text) for m in usable],
            [m.concept_ids[0] for m in usable],
            [m.doc_id for m in usable],
        )


def _channel_stats(
    generator: FusedGenerator,
    asked: _Retrieval,
    num_candidates: int,
    seed: list[int],
) -> dict[str, Any]:
    """Recall@k of each channel fused by ``generator`` on one split's queries.

    Each channel reads the queries as the fusion does (abbreviations expanded).
    """
    out = {}
    for method, channel in generator.channel_generators().items():
        _, _, stats = make_candidates(
            channel,
            asked.texts,
            asked.golds,
            num_candidates=num_candidates,
            seed=seed,
            synonyms=False,
            docs=asked.docs,
        )
        out[method] = stats.to_json()
    return out


def _queries(
    usable: Sequence[Mention],
    asked: _Retrieval,
    generator: CandidateGenerator,
    num_candidates: int,
    seed: list[int],
    synonyms: bool,
    context_words: int,
) -> tuple[list[LinkingExample], Any]:
    """The queries of one split's usable mentions, and the generator's statistics."""
    candidates, retrieved, stats = make_candidates(
        generator,
        asked.texts,
        asked.golds,
        num_candidates=num_candidates,
        seed=seed,
        synonyms=synonyms,
        docs=asked.docs,
    )
    golds = [
        generator.concepts[generator.index_of(m.concept_ids[0]) or 0].id for m in usable
    ]
    examples = [
        _example(m, text, cands, gold, found, context_words)
        for m, text, cands, gold, found in zip(
            usable, asked.texts, candidates, golds, retrieved, strict=True
        )
    ]
    return examples, stats


def _usable(
    mentions: Sequence[Mention], generator: Any, skips: SkipReport
) -> list[Mention]:
    """The mentions with one concept id that the dictionary holds; the rest are skipped."""
    usable = []
    for m in mentions:
        where = f"{m.source}:{m.line}" if m.source else m.doc_id
        if len(m.concept_ids) != 1:
            skips.add("composite mention (several concept ids)", where)
        elif generator.index_of(m.concept_ids[0]) is None:
            skips.add("gold concept not in the dictionary", where)
        else:
            usable.append(m)
    return usable


def _example(
    m: Mention, read: str, cands: tuple[Any, ...], gold: str, retrieved: bool, k: int
) -> LinkingExample:
    """One query; the ranker reads the mention as retrieval did (``read``)."""
    left, right = context(m.text, m.spans, k)
    return LinkingExample(
        mention=read,
        left_context=left,
        right_context=right,
        candidates=cands,
        gold=gold,
        doc_id=m.doc_id,
        retrieved=retrieved,
    )


def is_task_dir(path: Path | str) -> bool:
    """Whether ``path`` is a directory with a ``task.json`` written by kfacel."""
    meta = Path(path) / "task.json"
    try:
        info = json.loads(read_text(meta))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and str(info.get("format", "")).startswith(
        "kfacel-task/"
    )


def check_task_out(
    out_dir: Path | str, *, inputs: Iterable[Path | str] = (), overwrite: bool = False
) -> None:
    """Refuse a task output directory whose writing would lose data.

    Args:
        out_dir: the task directory to be written.
        inputs: the input files (or directories) the task is built from.
        overwrite: whether an existing task directory may be replaced.

    Raises:
        ValueError: naming the directory when an input lies in it (or is it), when
            its parent cannot be written, when it exists and is not empty and not a
            task directory, when it holds files other than a task's, or when it is a
            task directory and not ``overwrite``.
    """
    out = Path(out_dir)
    where = out.resolve()
    for source in inputs:
        path = Path(source).resolve()
        if path == where or where in path.parents:
            raise ValueError(
                f"output {out} holds the input {source}: writing it would destroy "
                "the input; choose another output directory"
            )
    parent = where.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output {out}: {parent} is not a writable directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not is_task_dir(out):
        raise ValueError(
            f"output {out} is not empty and not a kfacel task directory "
            f"(it holds {', '.join(entries[:3])}{', …' if len(entries) > 3 else ''}); "
            "refusing to replace it"
        )
    extra = [e for e in entries if e not in TASK_FILES]
    if extra:
        raise ValueError(
            f"output {out} holds files that are not part of a task "
            f"({', '.join(extra[:3])}); refusing to replace it"
        )
    if not overwrite:
        raise ValueError(
            f"output {out} already holds a task; give --overwrite to replace it"
        )


def write_task(
    out_dir: Path | str,
    splits: Mapping[str, Sequence[LinkingExample]],
    info: Mapping[str, Any],
    *,
    aliases: AliasTable | None = None,
    retriever: RetrieverTuning | None = None,
) -> Path:
    """Write a task directory at once: the three splits, ``task.json``, the aliases.

    With ``retriever``: its checkpoint as ``retriever/`` (carrying the consolidation
    states of the checkpoint it started from) and its groups.

    The files are written into a hidden temporary sibling directory, which replaces
    ``out_dir`` once complete; it is removed on every error path.

    Raises:
        ValueError: when a split is missing or empty, or ``out_dir`` is neither absent,
            empty nor a task directory (see :func:`check_task_out`); before anything
            is written.
    """
    out = Path(out_dir)
    for split in SPLITS:
        if not splits.get(split):
            raise ValueError(f"{out}: split {split!r} is empty; a task needs all three")
    check_task_out(out, overwrite=True)

    def write(tmp: Path) -> None:
        for split in SPLITS:
            lines = (
                json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
                for e in splits[split]
            )
            _write(tmp / f"{split}.jsonl", "".join(lines))
        meta = {"format": FORMAT, **info}
        text = json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=False)
        _write(tmp / "task.json", text + "\n")
        if aliases is not None:
            links = json.dumps(aliases.to_json(), separators=(",", ":"))
            _write(tmp / ALIASES_FILE, links + "\n")
        if retriever is not None:
            retriever.write(tmp)

    atomic_dir(out, write, replace=is_task_dir)  # checked again at the rename
    return out


def _write(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def read_split(path: Path) -> list[LinkingExample]:
    """The queries of one ``*.jsonl`` split file.

    Raises:
        ValueError: naming the file and line of a bad line, or when there is no query.
    """
    out = []
    for lineno, raw in text_lines(path):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object")
            out.append(LinkingExample.from_json(obj))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    if not out:
        raise ValueError(f"{path}: the split has no query")
    return out


FINGERPRINTED = ("task.json", *(f"{split}.jsonl" for split in SPLITS))
"""The files that define a task's queries: what :func:`task_fingerprint` hashes."""


def task_fingerprint(task_dir: Path | str) -> dict[str, str]:
    """SHA-256 of each file of ``FINGERPRINTED`` in ``task_dir`` (hex, by file name).

    The files are read in blocks, never whole; one that is absent (a hand-made task
    without ``task.json``) is left out, so comparing two fingerprints names the files
    that were changed, added or removed.
    """
    out = {}
    for name in FINGERPRINTED:
        file = Path(task_dir) / name
        if file.is_file():
            with file.open("rb") as fh:
                out[name] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def load_task(task_dir: Path | str) -> Task:
    """Load a task directory written by :func:`prepare_task` (or by hand).

    ``task.json`` is optional for hand-made tasks (the name is then the directory's).

    Raises:
        FileNotFoundError: when the directory or a split file is missing.
        ValueError: naming file and line of a bad line, or an empty split.
    """
    path = Path(task_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such task directory")
    info: dict[str, Any] = {}
    meta = path / "task.json"
    if meta.is_file():
        try:
            info = json.loads(read_text(meta))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{meta}:{exc.lineno}: not valid JSON: {exc.msg}"
            ) from None
        if not isinstance(info, dict):
            raise ValueError(f"{meta}: expected a JSON object")
    splits = {}
    for split in SPLITS:
        file = path / f"{split}.jsonl"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing split file")
        splits[split] = read_split(file)
    aliases = None
    if (path / ALIASES_FILE).is_file():
        try:
            aliases = AliasTable.from_json(json.loads(read_text(path / ALIASES_FILE)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path / ALIASES_FILE}: {exc}") from None
    name = str(info.get("name", path.name))
    tuned = path / RETRIEVER_DIR
    return Task(
        name=name,
        path=path,
        info=info,
        aliases=aliases,
        retriever=tuned if tuned.is_dir() else None,
        **splits,
    )
