"""Candidate rankers: every model maps a ``Batch`` to logits ``[N, C]``."""

from kfacel.models.bert import BertRanker, BertRankerConfig
from kfacel.models.cnn import CNNConfig, CNNRanker
from kfacel.models.registry import (
    MODELS,
    build_model,
    check_saved_files,
    foreign_entries,
    is_model_dir,
    load_model,
    read_model_config,
    replaceable_model_dir,
    save_model,
)
from kfacel.models.scoring import PairScorer

__all__ = [
    "MODELS",
    "BertRanker",
    "BertRankerConfig",
    "CNNConfig",
    "CNNRanker",
    "PairScorer",
    "build_model",
    "check_saved_files",
    "foreign_entries",
    "is_model_dir",
    "load_model",
    "read_model_config",
    "replaceable_model_dir",
    "save_model",
]
