"""House rules on the size of code in src/kfacel, checked from its syntax tree.

A table of rules (curvlinops-style): each row names what it measures and its limit, and
the test lists every offender with its file, name and length, so a failure says where
to cut. A function's length runs from its ``def`` line to its last line, docstring
included; a CLI handler is a function a ``cli`` module registers with
``set_defaults(handler=...)``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "kfacel"

Function = ast.FunctionDef | ast.AsyncFunctionDef

# Functions allowed to break a rule, each with the reason. Entries: (path under
# src/kfacel, name). Empty: every function keeps to its limit.
KNOWN_OFFENDERS: set[tuple[str, str]] = set()


def _functions(tree: ast.AST) -> Iterator[Function]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _length(fn: Function) -> int:
    assert fn.end_lineno is not None
    return fn.end_lineno - fn.lineno + 1


def _handler_names(tree: ast.AST) -> set[str]:
    """Names passed as ``handler=`` to ``set_defaults`` in a module."""
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "set_defaults"
        ):
            for kw in node.keywords:
                if kw.arg == "handler" and isinstance(kw.value, ast.Name):
                    names.add(kw.value.id)
    return names


def _all_functions(rel: str, tree: ast.AST) -> list[Function]:
    return list(_functions(tree))


def _cli_handlers(rel: str, tree: ast.AST) -> list[Function]:
    if not rel.startswith("cli/"):
        return []
    handlers = _handler_names(tree)
    return [fn for fn in _functions(tree) if fn.name in handlers]


@dataclass(frozen=True)
class SizeRule:
    """At most ``limit`` lines for every function ``select`` picks from a module."""

    what: str
    select: Callable[[str, ast.AST], list[Function]]
    limit: int


RULES = (
    SizeRule("function in src/kfacel", _all_functions, 80),
    SizeRule("CLI handler", _cli_handlers, 40),
)


def _modules() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        yield rel, ast.parse(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.what)
def test_no_function_is_longer_than_its_rule(rule: SizeRule) -> None:
    offenders = [
        f"{rel}::{fn.name} ({_length(fn)} lines)"
        for rel, tree in _modules()
        for fn in rule.select(rel, tree)
        if _length(fn) > rule.limit and (rel, fn.name) not in KNOWN_OFFENDERS
    ]
    assert not offenders, f"over {rule.limit} lines: " + ", ".join(offenders)


def test_the_rules_see_the_cli_handlers() -> None:
    """The handler rule measures something: every subcommand's handler is found."""
    found = {
        (rel, fn.name) for rel, tree in _modules() for fn in _cli_handlers(rel, tree)
    }
    assert ("cli/train.py", "run") in found
    assert ("cli/evaluate.py", "run") in found
    assert len(found) >= 10
