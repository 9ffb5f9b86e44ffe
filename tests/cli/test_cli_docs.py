"""``docs/cli.md`` holds what ``scripts/cli_docs.py`` generates from the parser."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_docs", ROOT / "scripts" / "cli_docs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_what_the_parser_generates() -> None:
    script = _script()
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert script.documented(doc) == script.generated(), (
        "docs/cli.md is out of date: run python scripts/cli_docs.py --write"
    )


def test_every_command_and_option_is_documented() -> None:
    generated = _script().generated()
    for command in ("prepare jsonl", "prepare pubtator", "train", "link", "evaluate"):
        assert f"### `kfacel {command}`" in generated
    assert "| `--composite` | `refuse` |" in generated
    assert "| `--num-candidates C` | `32` |" in generated
    assert "### Concept dictionary (TSV or MEDIC)" in generated
