"""The parsers' copies of library choices and defaults equal the library's own."""

from __future__ import annotations

import importlib

import pytest

from kfacel.cli import _choices


@pytest.mark.parametrize("name", sorted(_choices.SOURCES))
def test_each_copy_equals_its_source(name: str) -> None:
    module, attribute = _choices.SOURCES[name].split(":")
    source = getattr(importlib.import_module(module), attribute)
    assert getattr(_choices, name) == source


def test_every_copy_names_its_source() -> None:
    copies = {n for n in vars(_choices) if n.isupper() and n != "SOURCES"}
    assert copies == set(_choices.SOURCES)
