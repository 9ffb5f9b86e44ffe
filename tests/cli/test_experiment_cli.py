"""``kfacel experiment``, ``report`` and ``figures`` end to end on two tiny tasks."""

from __future__ import annotations

import json
import random

import pytest
import torch

from kfacel.cli import main
from kfacel.data.records import Candidate, LinkingExample
from kfacel.tasks.directory import write_task

WORDS = [f"word{i}" for i in range(16)]
CODES = [f"code{i}" for i in range(16)]

CONFIG = """
name = "tiny-cli"
methods = ["none", "ewc"]
lam_grid = [10.0]
tiers = [1, 2]
[[tasks]]
name = "a"
path = "{a}"
[[tasks]]
name = "b"
path = "{b}"
[model]
name = "cnn"
hidden = 8
embed_dim = 8
embeddings_from = "none"
num_features = 0
num_types = 0
[train]
epochs = 1
batch_size = 16
"""


def _examples(words: range, n: int, seed: int) -> list[LinkingExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = rng.choice(words)
        pool = [w, *rng.sample([x for x in words if x != w], 3)]
        cands = tuple(Candidate(f"C{x}", CODES[x]) for x in pool)
        out.append(LinkingExample(WORDS[w], "left", "", cands, f"C{w}", f"q{i}"))
    return out


@pytest.fixture
def config(tmp_path):
    torch.set_num_threads(1)
    dirs = {}
    for k, (name, words) in enumerate((("a", range(8)), ("b", range(8, 16)))):
        splits = {
            s: _examples(words, 32, 3 * k + j)
            for j, s in enumerate(("train", "dev", "test"))
        }
        dirs[name] = write_task(tmp_path / "tasks" / name, splits, {"name": name})
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG.format(**dirs))
    return path


def test_experiment_then_report(config, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        ["experiment", str(config), "--out", str(out), "--set", "train.lr=3e-3"]
    )
    assert code == 0
    assert "next: kfacel report" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 3e-3
    assert main(["report", str(out)]) == 0
    report = (out / "report" / "report.md").read_text()
    assert "Table 3: tier 2" in report
    assert (out / "report" / "table3.csv").read_text().startswith("Perm.,Method,λ")
    # resuming runs nothing new
    assert (
        main(["experiment", str(config), "--out", str(out), "--set", "train.lr=3e-3"])
        == 0
    )
    assert "0 cells run" in capsys.readouterr().out


def test_unknown_key_is_one_clear_error(config, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["experiment", str(config), "--out", str(out), "--set", "train.lrr=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown key 'lrr'" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["experiment", str(config), "--out", str(out), "--tiers", "4"]) == 2
    assert "--tiers '4'" in capsys.readouterr().err
    assert not out.exists()
    config.write_text(config.read_text() + "\n[penalty]\nlamda = 3\n")
    assert main(["experiment", str(config), "--out", str(out)]) == 2
    assert "penalty.lamda" in capsys.readouterr().err
    assert not out.exists()


ARMS = """
[arms.plain]
methods = ["none"]
tiers = [1]
[arms.protected]
lam_grid = [100.0]
"""


def test_each_arm_runs_into_its_own_directory(config, tmp_path, capsys) -> None:
    config.write_text(config.read_text() + ARMS)
    out = tmp_path / "armed"
    assert main(["experiment", str(config), "--out", str(out), "--arm", "plain"]) == 0
    assert json.loads((out / "arms.json").read_text())["arms"] == ["plain", "protected"]
    assert (out / "plain" / "config.json").is_file()
    assert not (out / "protected").exists()
    assert main(["experiment", str(config), "--out", str(out)]) == 0
    ran = json.loads((out / "protected" / "config.json").read_text())
    assert (ran["name"], ran["lam_grid"]) == ("tiny-cli-protected", [100.0])
    assert "run " + str(out / "plain") + ": 0 cells run" in capsys.readouterr().out


def test_an_arm_may_be_added_to_a_run_but_not_dropped(config, tmp_path, capsys) -> None:
    base = config.read_text()
    config.write_text(base + ARMS)
    out = tmp_path / "armed"
    assert main(["experiment", str(config), "--out", str(out), "--arm", "plain"]) == 0
    config.write_text(base + ARMS + '[arms.more]\nmethods = ["none"]\ntiers = [1]\n')
    assert main(["experiment", str(config), "--out", str(out), "--arm", "plain"]) == 0
    recorded = json.loads((out / "arms.json").read_text())["arms"]
    assert recorded == ["plain", "protected", "more"]
    config.write_text(base + '[arms.plain]\nmethods = ["none"]\ntiers = [1]\n')
    capsys.readouterr()
    assert main(["experiment", str(config), "--out", str(out), "--arm", "plain"]) == 2
    assert "holds the arms" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--arm", "weak"], "--arm 'weak': "),
        (["--set", "lam_grid=[]"], "lam_grid: tiers 2 and 3 need"),
    ],
)
def test_a_bad_arm_is_one_line_before_anything_is_written(
    config, tmp_path, capsys, argv, match
) -> None:
    config.write_text(config.read_text() + ARMS)
    out = tmp_path / "armed"
    assert main(["experiment", str(config), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_armed_config_refuses_a_directory_of_other_files(config, tmp_path, capsys):
    config.write_text(config.read_text() + ARMS)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["experiment", str(config), "--out", str(out)]) == 2
    assert "not an armed run directory" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_report_of_a_non_run_directory_fails_cleanly(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_figures_writes_both_pngs(tmp_path) -> None:
    assert main(["figures", "--out", str(tmp_path)]) == 0
    for name in ("figure1_toy_gaussians.png", "figure2_fisher.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
