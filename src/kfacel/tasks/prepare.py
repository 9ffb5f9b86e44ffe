"""Task preparation: a corpus's mentions in, shuffled candidate queries out.

:func:`prepare_task` runs the steps in order: the training split's links (the alias
table of the retrieval methods, the fine-tuning pairs of the retriever), the dense
retriever fine-tuned when asked (``retrieval.finetune``), the channel
(``retrieval.methods.build_generator``), then for each split its usable mentions,
sampled, retrieved and turned into candidate lists (``retrieval.candidates``), and last
the task directory written at once (``tasks.directory.write_task``).

Policy for mentions that cannot become a query (counted in ``task.json``):

- a composite mention (several concept ids, e.g. NCBI's ``D003110|D009369`` or
  ``D015862+D058499``) is skipped: a query has exactly one gold;
- a mention whose gold id is not in the dictionary is skipped (no name to show).

The context of a mention is the K whitespace-separated words left of its first span and
right of its last span, within its document text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfacel.data.aliases import AliasTable
from kfacel.data.records import Concept, LinkingExample, Mention, SkipReport
from kfacel.retrieval.abbreviations import retrieval_text
from kfacel.retrieval.base import CandidateGenerator, dictionary_digest
from kfacel.retrieval.candidates import CandidateStats, make_candidates
from kfacel.retrieval.dense import SentenceEncoder
from kfacel.retrieval.finetune import (
    RetrieverSettings,
    fine_tune,
    synonym_groups,
    training_groups,
)
from kfacel.retrieval.fusion import FusedGenerator
from kfacel.retrieval.methods import RETRIEVAL_METHODS, build_generator
from kfacel.tasks.directory import (
    FORMAT,
    RANKER_READS,
    SPLITS,
    RetrieverTuning,
    write_task,
)
from kfacel.tasks.split import sample_mentions

DENSE_METHODS = ("dense", "fused")
"""The methods that embed names with a sentence encoder, which can be fine-tuned."""
DEFAULT_METHOD = "fused"
"""A task's candidate method unless told otherwise: the retrieval a linker in use runs
(``prepare benchmark`` keeps the paper's generators, per task)."""
DEFAULT_NUM_CANDIDATES = 32
"""C unless told otherwise: where fused retrieval's recall curve flattens (recall@32 on
the public tasks' test splits: ``docs/results.md``, "Retrieval and candidate
generation")."""
DEFAULT_CONTEXT_WORDS = 10
"""K, words of context each side of a mention, unless told otherwise."""
DEFAULT_SEED = 13


@dataclass(frozen=True)
class TaskSettings:
    """How a task's queries are built from its mentions (recorded in ``task.json``).

    Attributes:
        method: candidate generator (``retrieval.methods.METHODS``). The paper's
            ``"tfidf"`` and ``"bm25"`` insert a gold they missed (benchmark accuracy);
            the retrieval methods ``"fused"`` and ``"alias"`` read the training
            split's alias table (written to ``aliases.json``), leave training queries
            whose gold they missed out of ``train.jsonl`` (counted), and mark dev and
            test queries with an inserted gold as not retrieved (end-to-end accuracy).
        num_candidates: C, candidates per query (gold included).
        context_words: K, words of context each side.
        seed: seeds sampling, filler candidates and shuffles.
        max_queries: per split, a cap (int) or a share (float) of the usable queries,
            sampled with ``seed``.
        synonyms: give each candidate its name closest to the mention (recorded as
            ``candidates.synonyms``); False: preferred names only.
        retriever: fine-tune the dense retriever of ``"dense"``/``"fused"`` on the
            dictionary's synonyms and the training split's mention → concept links
            first (``retrieval.finetune``; written to ``retriever/``); 0 epochs with
            a ``start``: that retriever as it is (e.g. ``kfacel align``'s); None or
            0 epochs without one: MiniLM as shipped.
    """

    method: str = DEFAULT_METHOD
    num_candidates: int = DEFAULT_NUM_CANDIDATES
    context_words: int = DEFAULT_CONTEXT_WORDS
    seed: int = DEFAULT_SEED
    max_queries: Mapping[str, int | float] | None = None
    synonyms: bool = True
    retriever: RetrieverSettings | None = None

    @property
    def retrieval(self) -> bool:
        """Whether the method reads the training alias table (trained on retrieval)."""
        return self.method in RETRIEVAL_METHODS


def prepare_task(
    out_dir: Path | str,
    *,
    name: str,
    splits: Mapping[str, Sequence[Mention]],
    concepts: Sequence[Concept],
    settings: TaskSettings,
    sources: Sequence[str] = (),
    skips: SkipReport | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build the queries of each split and write the task directory.

    Args:
        out_dir: the task directory (created; files in it are replaced).
        name: the task's name.
        splits: mentions of ``train``, ``dev`` and ``test``.
        concepts: the dictionary candidates are drawn from.
        settings: the method, C, K, seed, caps, names and retriever fine-tuning.
        sources: input files, recorded in ``task.json``.
        skips: what the readers skipped; the task's own skips are added to it.
        progress: a progress bar while dense retrieval embeds the dictionary.

    Returns:
        The contents of ``task.json``.

    Raises:
        ValueError: when a split is missing or has no usable query.
    """
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"task {name!r}: missing splits {missing}")
    skips = skips if skips is not None else SkipReport()
    links = _training_links(splits["train"], concepts)
    aliases = AliasTable.from_mentions(links) if settings.retrieval else None
    pairs = [(mention, concept_id) for _, mention, concept_id in links]
    tuned, done = _retriever(settings, concepts, pairs, progress)
    encoder = tuned.encoder if tuned is not None else None
    generator = build_generator(
        settings.method, concepts, aliases=aliases, encoder=encoder, progress=progress
    )
    info = _task_info(name, sources, concepts, settings, done)
    examples: dict[str, list[LinkingExample]] = {}
    for i, split in enumerate(SPLITS):
        built = _split_queries(
            name, split, i, splits[split], generator, settings, skips
        )
        examples[split] = built.queries
        info["counts"][split] = built.counts
        info["generator"][split] = built.stats
        if built.channels is not None:
            info.setdefault("channels", {})[split] = built.channels
    info["skipped"] = skips.to_json()
    write_task(
        out_dir, examples, info, aliases=aliases, retriever=tuned, concepts=concepts
    )
    return info


def _task_info(
    name: str,
    sources: Sequence[str],
    concepts: Sequence[Concept],
    settings: TaskSettings,
    retriever: dict[str, Any] | None,
) -> dict[str, Any]:
    """``task.json`` before its splits: the settings, the dictionary, the retriever."""
    candidates = {
        "method": settings.method,
        "num_candidates": min(settings.num_candidates, len(concepts)),
        "dictionary_size": len(concepts),
        "dictionary_sha256": dictionary_digest(concepts),
        "synonyms": settings.synonyms,
        "train_missed": "drop" if settings.retrieval else "insert",
        "ranker_reads": RANKER_READS,
    }
    return {
        "format": FORMAT,
        "name": name,
        "sources": [str(s) for s in sources],
        "candidates": candidates | ({"retriever": retriever} if retriever else {}),
        "context_words": settings.context_words,
        "seed": settings.seed,
        "counts": {},
        "generator": {},
    }


@dataclass(frozen=True)
class _SplitQueries:
    """One split's queries and what ``task.json`` records of them."""

    queries: list[LinkingExample]
    counts: dict[str, int]
    stats: dict[str, Any]
    """The generator's recall@k and accuracy@1."""
    channels: dict[str, Any] | None
    """Each fused channel's recall@k (fusion only)."""


def _split_queries(
    task: str,
    split: str,
    index: int,
    mentions: Sequence[Mention],
    generator: CandidateGenerator,
    settings: TaskSettings,
    skips: SkipReport,
) -> _SplitQueries:
    """The queries of split ``split`` (the ``index``-th), and their counts and stats.

    Raises:
        ValueError: when the split has no usable mention.
    """
    seed = [settings.seed, index]
    usable = _usable(mentions, generator, skips)
    cap = (settings.max_queries or {}).get(split)
    usable = sample_mentions(usable, cap, [settings.seed, index, 1])
    if not usable:
        raise ValueError(
            f"task {task!r}: split {split!r} has no usable mention "
            f"({len(mentions)} read; skipped: {skips.counts})"
        )
    asked = _Retrieval.of(generator, usable)
    queries, stats = _queries(
        usable, asked, generator, settings.num_candidates, seed, settings.synonyms,
        settings.context_words,
    )  # fmt: skip
    counts = {"mentions": len(mentions), "queries": len(queries)}
    counts["documents"] = len({m.doc_id for m in usable})
    if settings.retrieval and split == "train":
        # the ranker learns from what retrieval returns: a gold it missed would
        # teach that a dissimilar candidate can be gold
        kept = [q for q in queries if q.retrieved]
        counts |= {"dropped_not_retrieved": len(queries) - len(kept)}
        counts["queries"], queries = len(kept), kept
    channels = None
    if isinstance(generator, FusedGenerator):
        channels = _channel_stats(generator, asked, settings.num_candidates, seed)
    return _SplitQueries(queries, counts, stats.to_json(), channels)


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
    task: TaskSettings,
    concepts: Sequence[Concept],
    links: Sequence[tuple[str, str]],
    progress: bool,
) -> tuple[RetrieverTuning | None, dict[str, Any] | None]:
    """The retriever of a dense method and what was done, or (None, None).

    ``links``: the training split's ``(mention, concept id)`` pairs (never dev/test).
    The encoder starts from ``task.retriever.start``'s checkpoint when given, and is
    used as it is with 0 epochs (its groups are still recorded, for ``consolidate``).
    """
    settings = task.retriever
    if settings is None or task.method not in DENSE_METHODS:
        return None, None
    start = settings.start.checkpoint if settings.start is not None else None
    if settings.epochs <= 0 and start is None:
        return None, None
    encoder = SentenceEncoder(start)
    if settings.epochs <= 0:  # a given retriever, used as it is
        groups = synonym_groups(concepts, links if settings.mentions else ())
        return RetrieverTuning(encoder, groups, start), settings.to_json()
    done = fine_tune(encoder, concepts, settings, mentions=links, progress=progress)
    groups = training_groups(concepts, settings, links)
    return RetrieverTuning(encoder, groups, start), {**settings.to_json(), **done}


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
) -> tuple[list[LinkingExample], CandidateStats]:
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


def context(text: str, spans: Sequence[tuple[int, int]], k: int) -> tuple[str, str]:
    """The ``k`` words left of the first span and right of the last one.

    >>> context("a b c MENTION d e", [(6, 13)], 2)
    ('b c', 'd e')
    """
    left = text[: spans[0][0]].split()
    right = text[spans[-1][1] :].split()
    return " ".join(left[len(left) - k :] if k else []), " ".join(right[:k])
