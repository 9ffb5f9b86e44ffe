"""The doctests of the data modules' pure helpers pass."""

import doctest
import importlib

import pytest

MODULES = [
    "kfacel.data.records",
    "kfacel.data.aliases",
    "kfacel.data.readers.dictionary",
    "kfacel.data.readers.pubtator",
    "kfacel.data.readers.medic",
    "kfacel.data.readers.psytar",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0
