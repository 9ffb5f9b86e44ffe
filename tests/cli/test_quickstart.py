"""``kfacel quickstart``'s options and its own report directory."""

import json
from pathlib import Path

import pytest

from kfacel.cli import main
from kfacel.cli.quickstart import is_quickstart_dir
from kfacel.experiments.quickstart import EPOCHS


def test_an_earlier_versions_report_is_still_the_quickstarts(tmp_path: Path) -> None:
    """A report written before ``seeds`` and ``rules`` existed is replaced, not refused."""
    earlier = ("tasks", "individual", "matrices", "perc_delta", "forgetting_reduction")
    fields = dict.fromkeys((*earlier, "strengths", "not_forgotten", "seconds"), None)
    (tmp_path / "results.json").write_text(json.dumps(fields), encoding="utf-8")
    assert is_quickstart_dir(tmp_path)
    del fields["strengths"]
    (tmp_path / "results.json").write_text(json.dumps(fields), encoding="utf-8")
    assert not is_quickstart_dir(tmp_path)


def test_seeds_reach_the_runner(tmp_path: Path, monkeypatch, capsys) -> None:
    seen = {}

    class _Stop(Exception):
        pass

    def runner(tasks, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr("kfacel.demo.demo_tasks", lambda: [])
    monkeypatch.setattr("kfacel.experiments.quickstart.run_quickstart", runner)
    with pytest.raises(_Stop):
        main(
            ["quickstart", "--out", str(tmp_path / "qs"), "--seed", "3", "--seeds", "4"]
        )
    assert (seen["seed"], seen["seeds"]) == (3, 4)
    with pytest.raises(_Stop):
        main(["quickstart", "--out", str(tmp_path / "qs"), "--jobs", "1"])
    assert (seen["jobs"], seen["seeds"]) == (1, 2)
    assert seen["epochs"] == EPOCHS  # the CLI's literal default is the library's
    with pytest.raises(_Stop):  # never more processes than seeds
        main(["quickstart", "--out", str(tmp_path / "qs"), "--jobs", "4"])
    assert seen["jobs"] == 2
    assert "seeds 0–1 in 2 processes" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's own refusal, one line
        main(["quickstart", "--seeds", "0"])
    assert "--seeds: must be a positive integer" in capsys.readouterr().err
