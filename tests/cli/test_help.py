"""``kfacel --help`` and ``--version``: fast (no torch), every default shown."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import kfacel
from kfacel.cli import build_parser, main
from kfacel.cli._help import says_default, shown_default

ROOT = Path(__file__).parents[2]
HEAVY = ("torch", "numpy", "transformers", "scipy", "matplotlib", "sklearn")


def _parsers(
    parser: argparse.ArgumentParser,
) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _imported_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running ``code``."""
    probe = (
        f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    src = str(ROOT / "src")
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": src, "PATH": "", "COLUMNS": "100"},
    ).stdout
    return eval(out.strip().splitlines()[-1])  # a printed list of names


def test_help_of_every_command_loads_no_torch() -> None:
    code = (
        "import argparse, contextlib, io, kfacel.cli\n"
        "def walk(p):\n"
        "    p.format_help()\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for s in a.choices.values(): walk(s)\n"
        "walk(kfacel.cli.build_parser())\n"
        "with contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.suppress(SystemExit):\n"
        "    kfacel.cli.main(['train', '--help'])\n"
    )
    assert _imported_after(code) == []


def test_import_kfacel_loads_no_torch_until_a_name_is_used() -> None:
    assert _imported_after("import kfacel") == []
    assert "torch" in _imported_after("import kfacel; kfacel.KFACPenalty")


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"kfacel {kfacel.__version__}\n"


def test_the_version_is_the_one_pyproject_declares() -> None:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == kfacel.__version__


def test_every_option_with_a_default_shows_it() -> None:
    missing = []
    for parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = shown_default(action)
            if default is None or says_default(action.help):
                continue
            if f"(default: {default})" not in text:
                missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert missing == []


def test_help_shows_the_default_of_an_option_without_help_text(
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS (default: 3)" in help_text
    assert "--no-features no string features" in help_text  # False: no default shown


@pytest.mark.parametrize(
    ("default", "shown"),
    [
        (None, None),
        (False, None),
        ([], None),
        (argparse.SUPPRESS, None),
        (True, "True"),
        (0, "0"),
        (1e-6, "1e-06"),
        (100.0, "100"),
        ("0.7,0.1,0.2", "0.7,0.1,0.2"),
    ],
)
def test_shown_default(default: object, shown: str | None) -> None:
    assert shown_default(argparse.Action(["--x"], "x", default=default)) == shown


def test_a_positional_default_is_not_shown() -> None:
    assert shown_default(argparse.Action([], "model_dir", default="m")) is None


@pytest.mark.parametrize(
    ("command", "formats"),
    [
        (["prepare", "pubtator"], ["PubTator corpus", "dictionary (--dictionary F)"]),
        (["prepare", "jsonl"], ["JSONL mentions", "concept_ids", "dictionary ("]),
        (["link"], ['{"text": "...", "mention": "...", "start": 12}', "dictionary ("]),
        ([], ["exit codes: 0 done", "130 interrupted"]),
    ],
)
def test_help_describes_the_input_formats(
    command: list[str], formats: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    for text in formats:
        assert text in out


def test_doctests() -> None:
    import doctest

    from kfacel.cli import _help

    result = doctest.testmod(_help)
    assert result.attempted > 0
    assert result.failed == 0
