"""Corpus and dictionary readers: one format per module, parsing only, no torch."""

from kfacel.data.readers.cadec import cadec_concepts, read_cadec
from kfacel.data.readers.dictionary import read_dictionary, read_tsv_dictionary
from kfacel.data.readers.jsonl import read_jsonl_mentions
from kfacel.data.readers.lines import read_text, text_lines
from kfacel.data.readers.medic import read_medic
from kfacel.data.readers.psytar import read_psytar
from kfacel.data.readers.pubtator import read_pubtator

__all__ = [
    "cadec_concepts",
    "read_cadec",
    "read_dictionary",
    "read_jsonl_mentions",
    "read_medic",
    "read_psytar",
    "read_pubtator",
    "read_text",
    "read_tsv_dictionary",
    "text_lines",
]
