"""Queries to ``Batch`` tensors: token ids, masks, string-similarity features, types.

The features compare the mention with each candidate's name as the ranker reads it
(``Candidate.text``: its synonym closest to the mention, else its preferred name) after
normalization (lower case, alphanumeric runs only), one value in ``[0, 1]`` each, in the order of
``FEATURE_NAMES``:

- ``exact``: the normalized strings are equal;
- ``trigram_jaccard``: Jaccard similarity of the sets of character 3-grams of
  ``" " + text + " "`` (the measure behind character n-gram TF-IDF generators);
- ``token_jaccard``: Jaccard similarity of the sets of words;
- ``mention_covered``: share of the mention's words found in the name;
- ``name_covered``: share of the name's words found in the mention;
- ``prefix``: length of the common prefix over the longer length;
- ``length_ratio``: shorter over longer length.

With an ``AliasTable`` of the training split (``data/aliases.py``) four more features
follow, ``ALIAS_FEATURE_NAMES``, from counts over training documents other than the
query's own (``n(m, c)`` links of this mention to this candidate, ``n(m)`` occurrences
of the mention, ``n(c)`` golds of this concept):

- ``alias_share``: ``n(m, c) / n(m)`` (0 for an unseen mention);
- ``alias_seen``: ``n(m) > 0``;
- ``alias_count``: ``log(1 + n(m, c)) / log(1 + 32)``, capped at 1;
- ``concept_prior``: ``log(1 + n(c)) / log(1 + 256)``, capped at 1.

Candidates that carry their retrieval rank (``Candidate.rank``, tasks built with a
retrieval method and ``link`` on their models) add ``RANK_FEATURE_NAMES`` (the collator's
``ranks``): ``retrieval_rank`` ``1 / rank`` (0 for no rank), so the ranker weighs what
retrieval found (its alias table, TF-IDF and dense similarity) instead of starting over.

Semantic types of the candidates (a property of the concept, never of the mention) are
mapped to ids with a vocabulary built from the training queries (ids 1, 2, …); 0 stands
for a type that is unknown or missing.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch

from kfacel.data.aliases import AliasTable
from kfacel.data.records import Candidate, LinkingExample
from kfacel.data.tokenize import WordPieceTokenizer
from kfacel.types import Batch

FEATURE_NAMES = (
    "exact",
    "trigram_jaccard",
    "token_jaccard",
    "mention_covered",
    "name_covered",
    "prefix",
    "length_ratio",
)
ALIAS_FEATURE_NAMES = ("alias_share", "alias_seen", "alias_count", "concept_prior")
RANK_FEATURE_NAMES = ("retrieval_rank",)
_ALIAS_COUNT_SCALE = math.log1p(32)
_PRIOR_SCALE = math.log1p(256)
_WORD = re.compile(r"[a-z0-9]+")
NAME_CACHE_SIZE = 65_536
"""Most candidate names a collator keeps tokenized (least recently used dropped first)."""


def build_type_vocab(examples: Iterable[LinkingExample]) -> tuple[str, ...]:
    """Sorted semantic types of all candidates of ``examples`` (id ``i + 1`` each)."""
    return tuple(
        sorted(
            {c.semantic_type for e in examples for c in e.candidates if c.semantic_type}
        )
    )


@dataclass
class Collator:
    """Turns lists of queries into ``Batch`` tensors.

    Args:
        tokenizer: the word-piece tokenizer.
        max_mention_length: longest mention-in-context sequence, markers included.
        max_name_length: longest candidate name sequence.
        types: the semantic-type vocabulary (``build_type_vocab``); empty for none.
        aliases: training-split alias table for ``ALIAS_FEATURE_NAMES``; None for none.
        ranks: add ``RANK_FEATURE_NAMES`` from the candidates' retrieval ranks.
    """

    tokenizer: WordPieceTokenizer
    max_mention_length: int = 64
    max_name_length: int = 16
    types: tuple[str, ...] = ()
    aliases: AliasTable | None = None
    ranks: bool = False
    # derived state: neither a setting (not compared, not shown) nor unbounded
    _name_cache: OrderedDict[str, list[int]] = field(
        default_factory=OrderedDict, init=False, compare=False, repr=False
    )
    _type_ids: dict[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._type_ids = {t: i + 1 for i, t in enumerate(self.types)}  # 0: unknown

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the ``features`` columns this collator writes."""
        names: tuple[str, ...] = FEATURE_NAMES
        if self.aliases is not None:
            names += ALIAS_FEATURE_NAMES
        if self.ranks:
            names += RANK_FEATURE_NAMES
        return names

    def __call__(self, examples: Sequence[LinkingExample]) -> Batch:
        """The ``Batch`` of ``examples``; candidates padded to the largest C."""
        if not examples:
            raise ValueError("cannot collate an empty list of queries")
        tok = self.tokenizer
        mention_rows = tok.encode_mentions(
            [e.left_context for e in examples],
            [e.mention for e in examples],
            [e.right_context for e in examples],
            max_length=self.max_mention_length,
        )
        names = self._encode_names([c.text for e in examples for c in e.candidates])
        n, c_max = len(examples), max(len(e.candidates) for e in examples)
        l_name = max(len(ids) for ids in names.values())
        mention_ids, mention_mask = _pad(mention_rows, tok.pad_id)
        width = len(self.feature_names)
        ids: list[list[int]] = []  # [n × c_max] rows of l_name: built as lists,
        rows: list[tuple[float, ...]] = []  # turned into tensors once
        types: list[int] = []
        for e in examples:
            for cand in e.candidates:
                name = names[cand.text]
                ids.append(name + [tok.pad_id] * (l_name - len(name)))
                rows.append(self._features(e, cand))
                types.append(self._type_ids.get(cand.semantic_type or "", 0))
            missing = c_max - len(e.candidates)
            ids.extend([[tok.pad_id] * l_name] * missing)
            rows.extend([(0.0,) * width] * missing)
            types.extend([0] * missing)
        cand_ids = torch.tensor(ids, dtype=torch.long).view(n, c_max, l_name)
        features = torch.tensor(rows, dtype=torch.float32).view(n, c_max, width)
        cand_types = torch.tensor(types, dtype=torch.long).view(n, c_max)
        counts = torch.tensor([len(e.candidates) for e in examples])
        cand_valid = torch.arange(c_max)[None, :] < counts[:, None]
        cand_mask = (cand_ids != tok.pad_id) & cand_valid[..., None]
        # the [CLS] of a padding candidate stays unmasked so no row is all padding
        cand_mask[..., 0] = True
        return Batch(
            mention_ids=mention_ids,
            mention_mask=mention_mask,
            candidate_ids=cand_ids,
            candidate_mask=cand_mask,
            candidate_valid=cand_valid,
            labels=torch.tensor([e.gold_index for e in examples], dtype=torch.long),
            features=features,
            candidate_types=cand_types,
        )

    def _features(self, example: LinkingExample, cand: Candidate) -> tuple[float, ...]:
        """The ``feature_names`` values of one query and one of its candidates."""
        row = similarity_features(example.mention, cand.text)
        if self.aliases is not None:
            row += alias_features(self.aliases, example, cand.id)
        if self.ranks:
            row += (1.0 / cand.rank if cand.rank else 0.0,)
        return row

    def _encode_names(self, names: Sequence[str]) -> dict[str, list[int]]:
        """Token ids of each distinct name, from the cache or the tokenizer."""
        cache = self._name_cache
        out: dict[str, list[int]] = {}
        for name in names:
            if name in cache and name not in out:
                cache.move_to_end(name)  # recently used
                out[name] = cache[name]
        new = sorted({name for name in names if name not in out})
        rows = self.tokenizer.encode_names(new, max_length=self.max_name_length)
        out.update(zip(new, rows, strict=True))
        cache.update(zip(new, rows, strict=True))
        while len(cache) > NAME_CACHE_SIZE:
            cache.popitem(last=False)  # least recently used
        return out


def make_batches(
    examples: Sequence[LinkingExample], collator: Collator, *, batch_size: int
) -> list[Batch]:
    """Consecutive batches of ``batch_size`` queries (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [
        collator(examples[i : i + batch_size])
        for i in range(0, len(examples), batch_size)
    ]


def sample_candidates(batch: Batch, k: int, generator: torch.Generator) -> Batch:
    """``batch`` with each query's gold and ``k − 1`` of its other candidates.

    A sampled softmax over the generator's candidates (all of them hard negatives):
    the others are drawn uniformly among the valid ones, anew at every call, and keep
    their relative order; a query with fewer than ``k`` candidates keeps all of them
    (padding columns stay invalid). Training then encodes ``k`` names a query instead
    of ``C``.

    >>> b = Batch(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool),
    ...           torch.arange(4).reshape(1, 4, 1), torch.ones(1, 4, 1, dtype=torch.bool),
    ...           torch.ones(1, 4, dtype=torch.bool), torch.tensor([2]))
    >>> s = sample_candidates(b, 2, torch.Generator().manual_seed(0))
    >>> s.candidate_ids.shape, int(s.candidate_ids[0, s.labels[0], 0])
    (torch.Size([1, 2, 1]), 2)
    """
    n, c = batch.candidate_valid.shape
    if k >= c:
        return batch
    draw = torch.rand(n, c, generator=generator)  # in [0, 1)
    draw = draw.masked_fill(~batch.candidate_valid, -1.0)  # padding last
    draw[torch.arange(n), batch.labels] = 2.0  # the gold first
    keep = draw.topk(k, dim=1).indices.sort(dim=1).values  # [N, K] in original order
    labels = (keep == batch.labels[:, None]).long().argmax(dim=1)

    def pick(t: torch.Tensor) -> torch.Tensor:  # [N, C, ...] -> [N, K, ...]
        index = keep.reshape(n, k, *([1] * (t.dim() - 2))).expand(n, k, *t.shape[2:])
        return t.gather(1, index)

    return replace(
        batch,
        candidate_ids=pick(batch.candidate_ids),
        candidate_mask=pick(batch.candidate_mask),
        candidate_valid=pick(batch.candidate_valid),
        labels=labels,
        features=None if batch.features is None else pick(batch.features),
        candidate_types=None
        if batch.candidate_types is None
        else pick(batch.candidate_types),
    )


def similarity_features(mention: str, name: str) -> tuple[float, ...]:
    """String-similarity features of a mention and a name, ``FEATURE_NAMES`` order.

    >>> similarity_features("Heart attack", "heart attack")[:3]
    (1.0, 1.0, 1.0)
    """
    m_words, n_words = _words(mention), _words(name)
    m, n = " ".join(m_words), " ".join(n_words)
    m_set, n_set = set(m_words), set(n_words)
    shared = len(m_set & n_set)
    longer = max(len(m), len(n), 1)
    return (
        float(m == n and bool(m)),
        _jaccard(_trigrams(m), _trigrams(n)),
        _jaccard(m_set, n_set),
        shared / len(m_set) if m_set else 0.0,
        shared / len(n_set) if n_set else 0.0,
        _common_prefix(m, n) / longer,
        min(len(m), len(n)) / longer,
    )


def alias_features(
    table: AliasTable, example: LinkingExample, concept_id: str
) -> tuple[float, ...]:
    """Alias features of a query and a candidate id, ``ALIAS_FEATURE_NAMES`` order."""
    n = table.counts(example, concept_id)
    return (
        n.pair / n.mention if n.mention else 0.0,
        float(n.mention > 0),
        min(1.0, math.log1p(n.pair) / _ALIAS_COUNT_SCALE),
        min(1.0, math.log1p(n.concept) / _PRIOR_SCALE),
    )


@lru_cache(maxsize=200_000)
def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


@lru_cache(maxsize=200_000)
def _trigrams(text: str) -> frozenset[str]:
    padded = f" {text} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def _jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _common_prefix(a: str, b: str) -> int:
    k = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        k += 1
    return k


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` padded to the longest as one tensor, and the mask of their own tokens."""
    length = max(len(r) for r in rows)
    ids = [r + [pad_id] * (length - len(r)) for r in rows]
    lengths = torch.tensor([len(r) for r in rows])
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return torch.tensor(ids, dtype=torch.long), mask
