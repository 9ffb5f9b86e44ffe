"""``import kfacel``: every public name resolves on first use, from its own module."""

from __future__ import annotations

import importlib

import pytest

import kfacel


def test_every_public_name_has_a_source_and_resolves() -> None:
    assert set(kfacel._MODULE_OF) == set(kfacel.__all__) - {"__version__"}
    for name, module in kfacel._MODULE_OF.items():
        assert getattr(kfacel, name) is getattr(importlib.import_module(module), name)


def test_subpackages_resolve_as_attributes() -> None:
    assert kfacel.curvature is importlib.import_module("kfacel.curvature")


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        kfacel.nope  # noqa: B018


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from kfacel import *", namespace)
    assert set(kfacel.__all__) <= namespace.keys()
