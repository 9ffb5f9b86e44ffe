"""Shared synthetic models, batches and tasks of the tests, built once (docs/contributing.md).

Curvature cases follow curvlinops' ``test/cases.py``: a table of tiny float64 models,
each with a batch maker that can pad, so every estimator test runs models × Fisher kinds
× masks from the same table. Model tests share synthetic linking queries and a tiny
BERT configuration; CLI tests a tiny random transformer checkpoint written on the spot.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kfacel.data.records import Candidate, LinkingExample
from kfacel.positions import valid_positions

# ------------------------------------------------------------------ curvature models


class MLP(nn.Module):
    """Two Linear layers, one use per example: K-FAC is exact for one example."""

    def __init__(self, d_in: int = 4, h: int = 5, c: int = 3, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_in, h, bias=bias)
        self.fc2 = nn.Linear(h, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class SharedEncoder(nn.Module):
    """One Linear used at every position of two inputs (mention and candidates)."""

    def __init__(self, d: int = 3, h: int = 4, c: int = 3):
        super().__init__()
        self.enc = nn.Linear(d, h)
        self.head = nn.Linear(2 * h, c)

    def forward(self, a, b, mask_a, mask_b) -> torch.Tensor:
        ma, mb = mask_a, mask_b
        with valid_positions(ma):
            ha = torch.tanh(self.enc(a))  # [N, S, h]
        with valid_positions(mb):
            hb = torch.tanh(self.enc(b))  # [N, T, h]
        pa = (ha * ma[..., None]).sum(1) / ma.sum(1, keepdim=True)
        pb = (hb * mb[..., None]).sum(1) / mb.sum(1, keepdim=True)
        return self.head(torch.cat([pa, pb], -1))


def shared_batch(n: int = 6, s: int = 5, t: int = 3, d: int = 3) -> dict:
    """Inputs of :class:`SharedEncoder` with some padding in both sequences."""
    g = torch.Generator().manual_seed(1)
    mask_a = torch.rand(n, s, generator=g) > 0.3
    mask_a[:, 0] = True
    mask_b = torch.ones(n, t, dtype=torch.bool)
    mask_b[0, -1] = False
    return {
        "a": torch.randn(n, s, d, generator=g, dtype=torch.float64),
        "b": torch.randn(n, t, d, generator=g, dtype=torch.float64),
        "mask_a": mask_a,
        "mask_b": mask_b,
    }


class ConvNet(nn.Module):
    """A Conv1d, or the same map as a Linear over unfolded patches (``as_linear``)."""

    def __init__(self, as_linear: bool = False):
        super().__init__()
        self.as_linear = as_linear
        self.conv = nn.Conv1d(3, 4, kernel_size=3, padding=1)
        self.lin = nn.Linear(9, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, 3, L]
        if self.as_linear:
            patches = F.pad(x, (1, 1)).unfold(2, 3, 1).permute(0, 2, 1, 3).flatten(2)
            h = self.lin(patches)  # [N, L, 4]
        else:
            h = self.conv(x).transpose(1, 2)  # [N, L, 4]
        return self.head(torch.relu(h).amax(1))


class EmbedNet(nn.Module):
    """An Embedding, or the same map as a Linear over one-hot inputs (``one_hot``)."""

    def __init__(self, vocab: int = 7, d: int = 3, one_hot: bool = False):
        super().__init__()
        self.one_hot, self.vocab = one_hot, vocab
        self.emb = nn.Embedding(vocab, d)
        self.lin = nn.Linear(vocab, d, bias=False)
        self.head = nn.Linear(d, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: [N, S]
        if self.one_hot:
            h = self.lin(F.one_hot(ids, self.vocab).double())
        else:
            h = self.emb(ids)
        return self.head(torch.tanh(h).mean(1))


class TinyRanker(nn.Module):
    """Every layer kind: Embedding, Conv1d, LayerNorm, and a Linear called twice."""

    def __init__(self, vocab: int = 9, d: int = 4, c: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(d)
        self.enc = nn.Linear(d, d)
        self.head = nn.Linear(2 * d, c)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(torch.float64)
        with valid_positions(mask):
            h = self.emb(ids) * m  # [N, S, d], padding zeroed before the convolution
            h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # [N, S, d]
            h = self.norm(torch.tanh(h))
            a = torch.tanh(self.enc(h))  # first call
            b = torch.tanh(self.enc(a))  # second call of the same layer
        b = b.masked_fill(~mask[..., None], float("-inf"))
        pooled = torch.cat([(a * m).sum(1), b.amax(1)], -1)
        return self.head(pooled)


class TwoHeads(nn.Module):
    """``q`` and ``k`` read the same input; ``k`` only when the batch asks for it."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(3, 2)
        self.k = nn.Linear(3, 2)

    def forward(self, inputs: tuple[torch.Tensor, bool]) -> torch.Tensor:
        x, use_k = inputs
        out = self.q(x)
        return out + self.k(x) if use_k else out


class PositionNet(nn.Module):
    """Inputs shared by the whole batch, as Hugging Face passes position ids.

    ``pos`` (Embedding) reads position ids ``[1, S]`` and ``wave`` (Linear) a fixed
    ``[1, S, d]`` signal, both once for every example; with ``shared=False`` the same
    inputs are expanded to ``[N, S]`` and ``[N, S, d]`` first.
    """

    def __init__(self, shared: bool = True, vocab: int = 6, s: int = 5, d: int = 3):
        super().__init__()
        self.shared = shared
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(s, d)
        self.wave = nn.Linear(d, d)
        self.head = nn.Linear(d, 3)
        signal = torch.randn(1, s, d, generator=torch.Generator().manual_seed(7))
        self.register_buffer("signal", signal)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, s = ids.shape
        pos_ids = torch.arange(s).unsqueeze(0)  # [1, S]
        signal = self.signal[:, :s]  # [1, S, d]
        if not self.shared:
            pos_ids, signal = pos_ids.expand(n, s), signal.expand(n, s, -1)
        with valid_positions(mask):
            h = self.tok(ids) + self.pos(pos_ids)  # [N, S, d]
            h = torch.tanh(h + self.wave(signal))
        m = mask[..., None].to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


class CandidateRows(nn.Module):
    """A name encoder run on the ``N·C`` candidate rows of ``N`` queries.

    ``pos`` reads position ids ``[1, S]`` shared by every row (``shared=True``, as a
    Hugging Face encoder does) or expanded to ``[N·C, S]`` by hand; the rows' padding
    is marked ``[N·C, S]``, so a shared input stands for the ``N·C`` rows (K5).
    """

    def __init__(self, shared: bool = True, vocab: int = 6, s: int = 4, d: int = 3):
        super().__init__()
        self.shared = shared
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(s, d)
        self.enc = nn.Linear(d, d)
        self.query = nn.Linear(d, 1, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, c, s = ids.shape
        rows, rows_mask = ids.reshape(n * c, s), mask.reshape(n * c, s)
        pos_ids = torch.arange(s).unsqueeze(0)  # [1, S]
        if not self.shared:
            pos_ids = pos_ids.expand(n * c, s)  # [N C, S]
        with valid_positions(rows_mask):
            h = torch.tanh(self.enc(self.tok(rows) + self.pos(pos_ids)))  # [N C, S, d]
        m = rows_mask[..., None].to(h.dtype)
        names = (h * m).sum(1) / m.sum(1).clamp(min=1)  # [N C, d]
        return self.query(names).reshape(n, c)  # [N, C]


class Tagger(nn.Module):
    """A token classifier with Hugging Face's calling convention: logits ``[N, S, C]``.

    Takes ``input_ids`` and ``attention_mask`` as keyword arguments (no mark of its
    own: the estimators read the mapping's ``attention_mask``), position ids ``[1, S]``
    shared by the batch (``shared=False`` expands them by hand), a LayerNorm, and a
    token mixer so every label's loss reaches every position.
    """

    def __init__(self, shared: bool = True, vocab: int = 7, s: int = 5, d: int = 4):
        super().__init__()
        self.shared = shared
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(s, d)
        self.norm = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(2 * d, 3)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        n, s = input_ids.shape
        pos_ids = torch.arange(s).unsqueeze(0)  # [1, S]
        if not self.shared:
            pos_ids = pos_ids.expand(n, s)
        h = self.norm(self.tok(input_ids) + self.pos(pos_ids))  # [N, S, d]
        m = attention_mask[..., None].to(h.dtype)
        context = (torch.tanh(self.mix(h)) * m).sum(1, keepdim=True) / m.sum(1, True)
        return self.head(torch.cat([h, context.expand_as(h)], -1))  # [N, S, C]


# ------------------------------------------------------------------- the case table


def select_rows(inputs: Any, n: int | slice) -> Any:
    """Example ``n`` (a batch of one) or examples ``n`` of a tensor or a dict of them."""
    rows = n if isinstance(n, slice) else slice(n, n + 1)
    if isinstance(inputs, dict):
        return {k: v[rows] for k, v in inputs.items()}
    return inputs[rows]


def split_batches(inputs: Any, labels: torch.Tensor, parts: int) -> list[tuple]:
    """``(inputs, labels)`` cut into ``parts`` consecutive batches."""
    n = int(labels.shape[0])
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return [
        (select_rows(inputs, slice(a, b)), labels[a:b])
        for a, b in itertools.pairwise(cuts)
    ]


def _ids_batch(n: int, s: int, vocab: int, padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(n, s, dtype=torch.bool)
    if padded:
        mask[1, s - 2 :] = False
        mask[3, s - 1 :] = False
    return {"ids": torch.randint(0, vocab, (n, s), generator=g), "mask": mask}


def _mlp_batch(padded: bool) -> torch.Tensor:
    del padded  # one use per example: nothing to pad
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(2)).double()


def _rows_batch(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(4, 3, 4, dtype=torch.bool)  # N = 4 queries, C = 3 names
    if padded:
        mask[0, 1, 2:] = False
        mask[2, :, 3:] = False
    return {"ids": torch.randint(0, 6, (4, 3, 4), generator=g), "mask": mask}


def _tagger_batch(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    mask = torch.ones(3, 4, dtype=torch.long)
    if padded:
        mask[1, 2:] = 0
        mask[2, 3:] = 0
    return {
        "input_ids": torch.randint(0, 7, (3, 4), generator=g),
        "attention_mask": mask,
    }


def token_labels(inputs: dict[str, torch.Tensor], padded: bool) -> torch.Tensor:
    """Labels ``[N, S]`` of a tagger batch: -100 at padding and at a few real tokens."""
    mask = inputs["attention_mask"].bool()
    labels = torch.randint(0, 3, mask.shape, generator=torch.Generator().manual_seed(8))
    labels[~mask] = -100
    if padded:
        labels[0, 1] = labels[2, 0] = -100  # real tokens without a label (sub-words)
        labels[1] = -100  # an example without any loss term still counts in N
    return labels


def _shared_encoder_batch(padded: bool) -> dict[str, torch.Tensor]:
    batch = shared_batch(n=5)
    if not padded:
        batch["mask_a"] = torch.ones_like(batch["mask_a"])
        batch["mask_b"] = torch.ones_like(batch["mask_b"])
    return batch


@dataclass(frozen=True)
class CurvatureCase:
    """One row of the table: a model, its covered layers and a batch maker."""

    name: str
    model: Callable[[], nn.Module]
    batch: Callable[[bool], Any]  # padded -> inputs
    layers: tuple[str, ...]  # the layers with Kronecker factors

    labels: Callable[[Any, bool], torch.Tensor] | None = None  # (inputs, padded)

    def make(self, padded: bool) -> tuple[nn.Module, Any, torch.Tensor]:
        """A float64 model with fixed weights, its inputs and labels."""
        torch.manual_seed(0)
        model = self.model().double()
        inputs = self.batch(padded)
        if self.labels is not None:
            return model, inputs, self.labels(inputs, padded)
        first = inputs if torch.is_tensor(inputs) else next(iter(inputs.values()))
        return model, inputs, torch.arange(int(first.shape[0])) % 3


CASES = (
    CurvatureCase("mlp", MLP, _mlp_batch, ("fc1", "fc2")),
    CurvatureCase(
        "shared-positions", SharedEncoder, _shared_encoder_batch, ("enc", "head")
    ),
    CurvatureCase(
        "every-kind",
        TinyRanker,
        lambda padded: _ids_batch(5, 6, 9, padded),
        ("emb", "conv", "enc", "head"),
    ),
    CurvatureCase(
        "batch-shared",
        PositionNet,
        lambda padded: _ids_batch(5, 5, 6, padded),
        ("tok", "pos", "wave", "head"),
    ),
)
"""Models × masks (``CurvatureCase.make(padded)``); tests add the Fisher kinds."""

ROWS_CASES = (
    CurvatureCase(
        "candidate-rows",
        lambda: CandidateRows(shared=False),
        _rows_batch,
        ("tok", "pos", "enc", "query"),
    ),
)
"""A shared input over ``N·C`` rows, expanded by hand (the oracle's reference)."""

TOKEN_CASES = (
    CurvatureCase(
        "tagger", Tagger, _tagger_batch, ("tok", "pos", "mix", "head"), token_labels
    ),
)
"""Token outputs ``[N, S, C]`` with ``-100`` labels and an ``attention_mask`` (K9)."""

# ---------------------------------------------------------------- linking queries

WORDS = [
    "heart",
    "lung",
    "liver",
    "kidney",
    "brain",
    "blood",
    "bone",
    "skin",
    "nerve",
    "muscle",
    "fever",
    "pain",
    "cough",
    "rash",
    "tumor",
    "cancer",
    "virus",
    "cell",
    "gene",
    "protein",
    "drug",
    "dose",
    "acute",
    "chronic",
    "severe",
    "mild",
]
TYPES = ("disease", "anatomy", "chemical")


def synthetic_examples(n: int, *, seed: int, num_candidates: int = 5) -> list:
    """Queries whose gold candidate's name is the mention (the model tests' task)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        names = rng.sample(WORDS, num_candidates)
        gold = rng.randrange(num_candidates)
        cands = tuple(
            Candidate(f"C{WORDS.index(w)}", w, TYPES[WORDS.index(w) % 3]) for w in names
        )
        left = " ".join(rng.choices(WORDS, k=4))
        right = " ".join(rng.choices(WORDS, k=4))
        out.append(
            LinkingExample(names[gold], left, right, cands, cands[gold].id, f"d{i}")
        )
    return out


TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
"""A tiny random BERT over the MiniLM package's vocabulary (model tests)."""


def lora_ranker(rank: int = 4) -> nn.Module:
    """The transformer ranker on ``TINY_BERT`` with LoRA adapters of ``rank`` (seeded)."""
    from kfacel.models import build_model

    torch.manual_seed(0)
    return build_model(
        "transformer", encoder_config=TINY_BERT, layers=2, lora_rank=rank, dropout=0.0
    )


# ----------------------------------------------------- a tiny transformer checkpoint

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]


def write_tiny_encoder(directory: Path, words: list[str], *, hidden: int = 8) -> Path:
    """A random 1-layer BERT checkpoint with a word-level vocabulary of ``words``.

    Holds ``tokenizer.json``, ``vocab.txt``, ``config.json`` and
    ``model.safetensors``: what ``kfacel train --model transformer --encoder DIR``
    reads. Every word is one token, so sequences stay a few tokens long.
    """
    from safetensors.torch import save_file
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = [*_SPECIAL, *sorted(set(words)), *"abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = list(dict.fromkeys(vocab))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": hidden,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 32,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(**config), add_pooling_layer=False)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    return directory


# ------------------------------------------------------------- two code-word tasks

CODES = [f"code{chr(ord('a') + i)}" for i in range(len(WORDS))]
"""Concept names that share no string with the mentions (``WORDS[w]`` → ``CODES[w]``)."""


def code_examples(name: str, words: range, n: int, seed: int) -> list[LinkingExample]:
    """Mention ``WORDS[w]`` links to the concept named ``CODES[w]``: learned, not read."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = rng.choice(words)
        pool = [w, *rng.sample([x for x in words if x != w], 3)]
        rng.shuffle(pool)
        cands = tuple(Candidate(f"C{x}", CODES[x]) for x in pool)
        left = " ".join(rng.choices(WORDS, k=2))
        out.append(LinkingExample(WORDS[w], left, "", cands, f"C{w}", f"{name}{i}"))
    return out


CODE_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]
"""Concept names of ``code_task``, one per word of ``WORDS``."""


def code_task(name: str, words: range, n: int, seed: int) -> list[LinkingExample]:
    """Mention ``WORDS[w]`` links to the concept named ``CODE_WORDS[w]``: no string overlap.

    Two tasks over disjoint word ranges need different associations learned through
    the same encoders and scorer: plain fine-tuning on the second overwrites the first.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = rng.choice(words)
        pool = [w, *rng.sample([x for x in words if x != w], 4)]
        rng.shuffle(pool)
        cands = tuple(Candidate(f"C{x}", CODE_WORDS[x]) for x in pool)
        left = " ".join(rng.choices(WORDS, k=3))
        out.append(LinkingExample(WORDS[w], left, "", cands, f"C{w}", f"{name}{i}"))
    return out


TASK_A, TASK_B = range(0, 13), range(13, 26)
"""Disjoint word ranges of two ``code_task`` tasks: fine-tuning on B forgets A."""


def write_code_tasks(root: Path, sizes: tuple[int, int, int] = (32, 16, 16)) -> Path:
    """Task directories ``root/A`` and ``root/B`` over disjoint halves of ``WORDS``."""
    from kfacel.tasks.directory import write_task

    half = len(WORDS) // 2
    for k, (name, words) in enumerate(
        (("A", range(half)), ("B", range(half, len(WORDS))))
    ):
        splits = {
            split: code_examples(name, words, n, 10 * k + j)
            for j, (split, n) in enumerate(
                zip(("train", "dev", "test"), sizes, strict=True)
            )
        }
        write_task(root / name, splits, {"name": name})
    return root


# ------------------------------------------------------------------ PubTator corpora

CORPUS_FILLER = (
    "the patient was seen with a history of and treated for after".split()  # noqa: SIM905
)


def write_pubtator_corpus(
    path: Path,
    surfaces: dict[str, tuple[str, list[str]]],
    *,
    n_docs: int,
    seed: int,
    title: str = "Case report",
) -> None:
    """A PubTator corpus of ``n_docs`` documents, four annotated mentions each.

    Args:
        path: the file to write.
        surfaces: ``{concept id: (type, [what authors write])}``; a mention's concept
            and (when it has several) its surface are drawn with ``seed``.
        n_docs: documents, PMIDs 1000, 1001, ….
        seed: seeds the filler words, concepts and surfaces.
        title: every document's title (offsets count it and a space).
    """
    rng = random.Random(seed)
    lines = []
    for d in range(n_docs):
        pmid = str(1000 + d)
        words: list[str] = []
        notes = []
        for _ in range(4):
            words += rng.choices(CORPUS_FILLER, k=3)
            cid = rng.choice(sorted(surfaces))
            typ, options = surfaces[cid]
            surface = options[0] if len(options) == 1 else rng.choice(options)
            start = len(" ".join(words)) + (1 if words else 0)
            words.append(surface)
            notes.append((start, start + len(surface), surface, typ, cid))
        lines += [f"{pmid}|t|{title}", f"{pmid}|a|{' '.join(words)}"]
        shift = len(title) + 1
        lines += [
            f"{pmid}\t{s + shift}\t{e + shift}\t{m}\t{t}\t{c}"
            for s, e, m, t, c in notes
        ]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_tsv_dictionary(path: Path, concepts: dict[str, tuple[str, ...]]) -> None:
    """A TSV dictionary (id, type, name a line) of ``{id: (type, name, …)}``."""
    path.write_text(
        "".join(
            f"{cid}\t{typ}\t{name}\n"
            for cid, (typ, *names) in concepts.items()
            for name in names
        ),
        encoding="utf-8",
    )


# ------------------------------------------------------------------------ processes


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid
