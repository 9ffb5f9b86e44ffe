"""The doctests of the retrieval modules' pure helpers pass."""

import doctest
import importlib

import pytest

MODULES = [
    "kfacel.retrieval.abbreviations",
    "kfacel.retrieval.ann",
    "kfacel.retrieval.base",
    "kfacel.retrieval.ontology",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0
