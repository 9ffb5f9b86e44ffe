"""Imports point one way (docs/contributing.md §1): each part imports only the layers below."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "kfacel"

# What each top-level part may import from kfacel (besides itself).
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "positions": set(),
    "_progress": set(),
    "_io": set(),
    "_lock": {"_io"},
    "_checkpoint": set(),
    "curvature": {"types", "positions", "_progress", "_io"},
    "consolidation": {"types", "curvature", "_io"},
    "penalties": {"types", "curvature", "_io", "consolidation"},
    "models": {"types", "positions", "_io", "_checkpoint"},
    "data": {"types", "_progress", "_io", "_checkpoint"},
    "retrieval": {
        "types",
        "_progress",
        "_io",
        "_lock",
        "_checkpoint",
        "curvature",
        "penalties",
        "consolidation",
        "data",
    },
    "tasks": {"types", "_progress", "_io", "_checkpoint", "data", "retrieval"},
    "demo": {"data", "tasks"},
    "linking": {
        "types",
        "positions",
        "_progress",
        "_io",
        "_checkpoint",
        "consolidation",
        "models",
        "data",
        "retrieval",
        "tasks",
    },
    "training": {
        "types",
        "positions",
        "_progress",
        "_io",
        "_checkpoint",
        "curvature",
        "penalties",
        "consolidation",
        "models",
        "data",
        "linking",
        "retrieval",
        "tasks",
    },
    "experiments": {
        "types",
        "positions",
        "_progress",
        "_io",
        "_lock",
        "_checkpoint",
        "curvature",
        "penalties",
        "consolidation",
        "models",
        "data",
        "linking",
        "retrieval",
        "tasks",
        "training",
    },
    "hf": {
        "types",
        "positions",
        "_progress",
        "_io",
        "_checkpoint",
        "curvature",
        "penalties",
        "consolidation",
        "data",
        "training",
    },
    "spacy": {  # the spaCy component: a thin caller of linking's API
        "types",
        "positions",
        "_progress",
        "_io",
        "_checkpoint",
        "consolidation",
        "models",
        "data",
        "retrieval",
        "tasks",
        "linking",
    },
    "cli": {
        "types",
        "positions",
        "_progress",
        "_io",
        "_lock",
        "_checkpoint",
        "curvature",
        "penalties",
        "consolidation",
        "models",
        "data",
        "linking",
        "retrieval",
        "tasks",
        "training",
        "experiments",
        "demo",
    },
}


def _part(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("kfacel."):
                parts.add(name.split(".")[1])
    return parts


SOURCES = sorted(p for p in PKG.rglob("*.py") if _part(p) in ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down_the_layers(path: Path) -> None:
    part = _part(path)
    bad = _imported_parts(path) - ALLOWED[part] - {part}
    assert not bad, f"{path.relative_to(PKG)} ({part}) imports {sorted(bad)}"


def test_every_part_has_a_rule() -> None:
    parts = {_part(p) for p in PKG.rglob("*.py")} - {"__init__", "__main__"}
    assert parts <= set(ALLOWED), sorted(parts - set(ALLOWED))
