"""``scripts/results_doc.py`` turns a tiny ``results.json`` into the tables expected."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "results_doc", ROOT / "scripts" / "results_doc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


MACHINE = {"cpu": "EPYC", "cpu_count": 16, "device": "cpu", "torch": "2.6.0"}
RESULTS = {
    "run": "tiny",
    "config_digest": "0123456789abcdef" * 4,
    "commit": "fedcba9876543210",
    "machine": MACHINE,
    "claims": [
        {"id": "tier2/kfac/reduction/out-of-sample", "value": 62.5,
         "interval": [40.25, 84.75], "bootstrap": [50.0, 75.0], "seeds": 3,
         "interval_note": ""},
        {"id": "tier2/kfac/new-task-cost/in-sample", "value": 1.0, "interval": None,
         "bootstrap": None, "seeds": 1,
         "interval_note": "1 seed(s): no interval, no bootstrap"},
    ],
}  # fmt: skip
TOML = """
[[section]]
marker = "headline"
title = "KFC out of sample"
results = "runs/tiny/report/results.json"
claims = ["tier2/kfac/reduction/out-of-sample"]
command = "kfacel report runs/tiny"
"""
ROW = (
    "| tier2/kfac/reduction/out-of-sample | 62.50 | [40.25, 84.75] | [50.00, 75.00] "
    "| 3 | fedcba9876 | EPYC, 16 CPUs, torch 2.6.0 |"
)


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "runs" / "tiny" / "report").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "report" / "results.json").write_text(
        json.dumps(RESULTS)
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.toml").write_text(TOML)
    return tmp_path


PAGE = (
    "# Results\n\nBy hand.\n\n<!-- results:headline -->\n\n## Next\n\nAlso by hand.\n"
)


def test_a_section_fills_its_marked_block_with_the_claims_it_names(repo) -> None:
    script = _script()
    out = repo / "docs" / "results.md"
    out.write_text(PAGE, encoding="utf-8")
    args = ["--config", str(repo / "docs" / "results.toml"), "--out", str(out)]
    assert script.main([*args, "--check"]) == 1  # the block is not filled yet
    assert script.main(args) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nBy hand.\n\n<!-- results:headline -->\n")
    assert text.endswith("<!-- /results:headline -->\n\n## Next\n\nAlso by hand.\n")
    assert "### KFC out of sample\n\nCommand: `kfacel report runs/tiny`\n" in text
    assert (
        "From `runs/tiny/report/results.json` (config digest `0123456789ab`)." in text
    )
    assert ROW in text
    assert "new-task-cost" not in text  # not named in the section
    assert script.main([*args, "--check"]) == 0
    assert script.main(args) == 0  # filling again replaces the block, nothing else
    assert out.read_text(encoding="utf-8") == text
    out.write_text(text.replace("62.50", "63.00"), encoding="utf-8")
    assert script.main([*args, "--check"]) == 1


def test_a_marker_the_page_lacks_is_one_line(repo, capsys) -> None:
    script = _script()
    out = repo / "docs" / "results.md"
    out.write_text("# Results\n", encoding="utf-8")
    args = ["--config", str(repo / "docs" / "results.toml"), "--out", str(out)]
    assert script.main(args) == 2
    assert "no <!-- results:headline -->" in capsys.readouterr().err


def test_paths_given_show_every_claim_and_say_why_an_interval_is_missing(
    repo, tmp_path
) -> None:
    script = _script()
    out = tmp_path / "r.md"
    path = repo / "runs" / "tiny" / "report" / "results.json"
    assert script.main([str(path), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert f"Command: `kfacel report {repo / 'runs' / 'tiny'}`" in text
    assert ROW in text
    assert (
        "| tier2/kfac/new-task-cost/in-sample | 1.00 | – (1 seed(s): no interval, "
        "no bootstrap) | – | 1 |"
    ) in text


def test_an_armed_runs_claims_carry_their_arms_commit(tmp_path) -> None:
    script = _script()
    doc = {
        "run": "armed",
        "config_digest": "d" * 64,
        "arms": {"paper": {"commit": "aaaa", "machine": {**MACHINE, "cpu": "Xeon"}}},
        "claims": [{**RESULTS["claims"][0], "id": "paper/x", "arm": "paper"}],
    }
    path = tmp_path / "armed" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    text = script.render(script.sections_from_paths([path]))
    assert "| paper/x | 62.50 |" in text
    assert "| 3 | aaaa | Xeon, 16 CPUs, torch 2.6.0 |" in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            TOML.replace('out-of-sample"]', 'median"]'),
            "no claim 'tier2/kfac/reduction/median'",
        ),
        (TOML.replace("runs/tiny", "runs/gone"), "no such results.json"),
        (TOML.replace("title", "titel"), "unknown keys ['titel']"),
    ],
)
def test_a_bad_section_is_one_line_naming_it(repo, capsys, toml, message) -> None:
    (repo / "docs" / "results.toml").write_text(toml)
    args = ["--config", str(repo / "docs" / "results.toml"), "--out", str(repo / "x")]
    assert _script().main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (repo / "x").exists()
