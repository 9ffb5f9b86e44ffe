"""The choices and defaults the parsers show, held here so that ``--help`` loads no torch.

Each value is a copy of the library constant named in its comment; the library is what
uses it. ``tests/cli/test_choices.py`` checks every copy against its source, so a new
candidate method or precision fails a test until it is added here too.
"""

from __future__ import annotations

CANDIDATE_METHODS = ("tfidf", "bm25", "dense", "alias", "fused")
"""``kfacel.retrieval.methods.METHODS``."""
BENCHMARK_TASKS = ("medmentions", "cadec", "ncbi")
"""``kfacel.tasks.benchmark.TASKS``."""
CONSOLIDATION_METHODS = ("kfac", "ewc", "l2")
"""``kfacel.consolidation.METHODS``."""
CONSOLIDATION_SPLITS = ("train", "dev")
"""``kfacel.training.consolidate.CONSOLIDATION_SPLITS``."""
DAMPING_KINDS = ("uniform", "factored")
"""``kfacel.penalties.ewc_kfac.DAMPING_KINDS``."""
DEFAULT_CANDIDATES = "fused"
"""``kfacel.tasks.prepare.DEFAULT_METHOD``."""
DEFAULT_NUM_CANDIDATES = 32
"""``kfacel.tasks.prepare.DEFAULT_NUM_CANDIDATES``."""
DEFAULT_BUDGET_RATE = 3.9
"""``kfacel.penalties.strength.DEFAULT_BUDGET_RATE``."""
DEFAULT_KFAC_DAMPING = 1e-6
"""``kfacel.penalties.strength.DEFAULT_KFAC_DAMPING``."""
DEFAULT_FORGET_ALPHA = 1.0
"""``kfacel.consolidation.forget.DEFAULT_ALPHA``."""
DEFAULT_FORGET_LAM = 1.0
"""``kfacel.consolidation.forget.DEFAULT_LAM``."""
DEFAULT_RETRIEVER_LAM = 1e2
"""``kfacel.retrieval.continual.DEFAULT_RETRIEVER_LAM``."""
DEFAULT_RETRIEVER_STEPS = 32
"""``kfacel.retrieval.continual.DEFAULT_RETRIEVER_STEPS``."""
FORGET_METHODS = ("ssd", "kfac-ssd")
"""``kfacel.consolidation.forget.FORGET_METHODS``."""
OPTIMIZERS = ("adamw", "sgd")
"""``kfacel.training.trainer.OPTIMIZERS``."""
PENALTIES = ("none", "l2", "ewc", "kfac")
"""``kfacel.training.continual.PENALTIES``."""
PRECISIONS = ("auto", "float32", "bfloat16")
"""``kfacel.models.precision.PRECISIONS``."""

SOURCES = {
    "CANDIDATE_METHODS": "kfacel.retrieval.methods:METHODS",
    "BENCHMARK_TASKS": "kfacel.tasks.benchmark:TASKS",
    "CONSOLIDATION_METHODS": "kfacel.consolidation:METHODS",
    "CONSOLIDATION_SPLITS": "kfacel.training.consolidate:CONSOLIDATION_SPLITS",
    "DAMPING_KINDS": "kfacel.penalties.ewc_kfac:DAMPING_KINDS",
    "DEFAULT_CANDIDATES": "kfacel.tasks.prepare:DEFAULT_METHOD",
    "DEFAULT_NUM_CANDIDATES": "kfacel.tasks.prepare:DEFAULT_NUM_CANDIDATES",
    "DEFAULT_BUDGET_RATE": "kfacel.penalties.strength:DEFAULT_BUDGET_RATE",
    "DEFAULT_KFAC_DAMPING": "kfacel.penalties.strength:DEFAULT_KFAC_DAMPING",
    "DEFAULT_FORGET_ALPHA": "kfacel.consolidation.forget:DEFAULT_ALPHA",
    "DEFAULT_FORGET_LAM": "kfacel.consolidation.forget:DEFAULT_LAM",
    "FORGET_METHODS": "kfacel.consolidation.forget:FORGET_METHODS",
    "DEFAULT_RETRIEVER_LAM": "kfacel.retrieval.continual:DEFAULT_RETRIEVER_LAM",
    "DEFAULT_RETRIEVER_STEPS": "kfacel.retrieval.continual:DEFAULT_RETRIEVER_STEPS",
    "OPTIMIZERS": "kfacel.training.trainer:OPTIMIZERS",
    "PENALTIES": "kfacel.training.continual:PENALTIES",
    "PRECISIONS": "kfacel.models.precision:PRECISIONS",
}
"""``module:name`` of the library constant each value copies (for the test)."""
