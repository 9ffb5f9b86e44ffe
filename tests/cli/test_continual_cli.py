"""The user's workflow on the CLI: train → consolidate → train --init --penalty → evaluate."""

from __future__ import annotations

import json

import pytest
import torch

from kfacel.cli import main
from kfacel.consolidation import load_state
from kfacel.penalties.strength import DEFAULT_BUDGET, DEFAULT_KFAC_DAMPING
from kfacel.tasks.directory import Task, write_task
from tests._synth import TASK_A, TASK_B, code_task

CNN = [
    "--model",
    "cnn",
    "--hidden",
    "16",
    "--no-types",
    "--no-features",
    "--max-length",
    "16",
]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual")
    for name, words, seed in (("A", TASK_A, 0), ("B", TASK_B, 10)):
        splits = {
            s: code_task(name, words, n, seed + i)
            for i, (s, n) in enumerate((("train", 64), ("dev", 32), ("test", 32)))
        }
        write_task(root / name, splits, {"name": name})
    return root


def test_workflow_carries_states_forward(tasks, tmp_path, capsys) -> None:
    v1, v2, v3 = tmp_path / "v1", tmp_path / "v2", tmp_path / "v3"
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "A"),
                "--out",
                str(v1),
                *CNN,
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(["consolidate", str(v1), "--task", str(tasks / "A"), "--method", "kfac"])
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["tasks"] == ["A"]
    assert report["state_bytes"] > 0
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "B"),
                "--init",
                str(v1),
                "--penalty",
                "kfac",
                "--lam",
                "10",
                "--out",
                str(v2),
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["history"] == ["A", "B"]
    logged = json.loads((v2 / "train_log.json").read_text())["epochs"]
    assert logged[0]["penalty"] > 0  # the K-FAC penalty of A was active
    assert [s.task for s in load_state(v2)] == [
        "A"
    ]  # carried forward, no old data read
    b_task = str(tasks / "B")
    assert main(["consolidate", str(v2), "--task", b_task, "--approx", "reduce"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["approx"] == "reduce"
    assert [s.meta["approx"] for s in load_state(v2)] == ["expand", "reduce"]
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "B"),
                "--init",
                str(v2),
                "--penalty",
                "kfac",
                "--lam-per-task",
                "A=10,B=100",
                "--lrc",
                "0.5",
                "--out",
                str(v3),
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert [s.task for s in load_state(v3)] == ["A", "B"]
    config = json.loads((v3 / "config.json").read_text())
    assert config["continual"]["lam"] == {"A": 10.0, "B": 100.0}
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(v3),
                "--task",
                str(tasks / "A"),
                "--task",
                str(tasks / "B"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert set(json.loads(out.read_text())) == {"A", "B"}


def test_replay_and_misuse_get_clear_errors(tasks, tmp_path, capsys) -> None:
    v1 = tmp_path / "v1"
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "A"),
                "--out",
                str(v1),
                *CNN,
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    # a task the model was not trained on (a typo in --task): refused, nothing written
    assert main(["consolidate", str(v1), "--task", str(tasks / "B")]) == 2
    err = capsys.readouterr().err
    assert "last trained on 'A', not on task 'B'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (v1 / "consolidation").exists()
    # a penalty without a consolidated task
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "B"),
                "--init",
                str(v1),
                "--penalty",
                "ewc",
                "--lam",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "consolidate" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert (
        main(["consolidate", str(v1), "--task", str(tasks / "A"), "--method", "ewc"])
        == 0
    )
    # the same task twice, a λ for an unknown task, --out over --init
    assert main(["consolidate", str(v1), "--task", str(tasks / "A")]) == 2
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "B"),
                "--init",
                str(v1),
                "--penalty",
                "ewc",
                "--lam-per-task",
                "Z=1",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "Z" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "B"),
                "--init",
                str(v1),
                "--penalty",
                "kfac",
                "--lam",
                "1",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )  # state is EWC, not K-FAC
    assert (
        main(["train", "--task", str(tasks / "B"), "--init", str(v1), "--out", str(v1)])
        == 2
    )
    assert (v1 / "model.safetensors").exists()
    # experience replay (needs the old data): runs and carries the state forward
    assert (
        main(
            [
                "train",
                "--task",
                str(tasks / "B"),
                "--init",
                str(v1),
                "--replay",
                str(tasks / "A"),
                "--replay-every",
                "2",
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert [s.task for s in load_state(tmp_path / "r")] == ["A"]


def test_budget_bayes_and_tolerance_choose_lambda_without_old_data(
    tasks, tmp_path, capsys
) -> None:
    v1 = tmp_path / "v1"
    a, b = str(tasks / "A"), str(tasks / "B")
    assert main(["train", "--task", a, "--out", str(v1), *CNN, "--epochs", "1"]) == 0
    assert main(["consolidate", str(v1), "--task", a, "--method", "kfac"]) == 0
    base = [
        "train",
        "--task",
        b,
        "--init",
        str(v1),
        "--penalty",
        "kfac",
        "--epochs",
        "2",
    ]

    assert main([*base, "--budget", "1e-7", "--out", str(tmp_path / "budget")]) == 0
    epochs = json.loads((tmp_path / "budget" / "train_log.json").read_text())["epochs"]
    status = epochs[-1]["constraints"]["A"]
    assert status["budget"] == 1e-7
    assert status["lam"] > 0  # the budget binds: λ grew from 0
    assert status["predicted_rise"] >= 0
    config = json.loads((tmp_path / "budget" / "config.json").read_text())
    assert config["continual"]["budget"] == {"A": 1e-7}
    assert config["continual"]["lam_final"]["A"] == status["lam"]

    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "default")]) == 0  # no strength given
    assert (  # the rule in effect, said before training
        "kfacel train: protecting 1 task (A) with kfac, budget ε=0.005 nats, "
        "rate 3.9 per run, damping factored δ=1e-06\n"
    ) in capsys.readouterr().err
    config = json.loads((tmp_path / "default" / "config.json").read_text())
    assert config["continual"]["budget"] == {"A": DEFAULT_BUDGET}
    assert config["continual"]["damping"] == DEFAULT_KFAC_DAMPING  # and the default δ
    assert config["continual"]["damping_kind"] == "factored"

    damped = tmp_path / "damped"
    args = ["--lam", "10", "--damping", "1e-3", "--damping-kind", "uniform"]
    assert main([*base, *args, "--out", str(damped)]) == 0
    config = json.loads((damped / "config.json").read_text())
    assert config["continual"]["damping_kind"] == "uniform"  # what the user gave
    assert config["continual"]["damping"] == 1e-3

    unprotected = [*base, "--penalty", "none", "--out", str(tmp_path / "plain")]
    assert main(unprotected) == 0
    assert (
        f"kfacel train: warning: {v1} holds 1 consolidation state but --penalty is "
        "none: training is unprotected; pass --penalty kfac to protect them\n"
    ) in capsys.readouterr().err

    assert main([*base, "--lam", "bayes", "--out", str(tmp_path / "bayes")]) == 0
    config = json.loads((tmp_path / "bayes" / "config.json").read_text())
    assert config["continual"]["lam"] == {"A": 64 / 64}  # N_A / N_B

    assert main([*base, "--tolerance", "100", "--out", str(tmp_path / "tol")]) == 0
    search = json.loads((tmp_path / "tol" / "config.json").read_text())["continual"][
        "tolerance_search"
    ]
    assert search["chosen"] == 1e4  # every λ is within 100 points: the largest is taken
    assert len(search["tried"]) == 9
    capsys.readouterr()

    for bad, named in (
        (["--budget", "0"], "--budget must be"),
        (["--budget", "Z=0.1"], "budget given for ['Z']"),
        (["--budget", "0.1", "--lam", "1"], "one of λ, bayes or a budget"),
        (["--tolerance", "1", "--lam", "1"], "--tolerance chooses λ itself"),
        (
            ["--tolerance", "1", "--penalty", "none"],
            "error: --tolerance needs --penalty ewc/kfac/l2: with --penalty none",
        ),
        (["--lam", "1e300"], "--lam must be a λ in [0, 1e+15]"),
    ):
        assert main([*base, *bad, "--out", str(tmp_path / "x")]) == 2
        assert named in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit, match="2"):  # argparse refuses it while parsing
        main([*base, "--lam", "inf", "--out", str(tmp_path / "x")])
    assert "argument --lam: must be a finite number" in capsys.readouterr().err


def test_factor_rank_keeps_large_factors_low_rank_under_the_default_penalty(
    tasks, tmp_path, capsys
) -> None:
    """`consolidate --factor-rank K` (K10) stores smaller factors.

    The default KFC penalty (factored damping) trains with them.
    """
    import shutil

    from kfacel.curvature.factors import LowRankFactor

    whole, low, v2 = tmp_path / "whole", tmp_path / "low", tmp_path / "v2"
    a = str(tasks / "A")
    assert main(["train", "--task", a, "--out", str(whole), *CNN, "--epochs", "1"]) == 0
    shutil.copytree(whole, low)
    assert main(["consolidate", str(whole), "--task", a]) == 0
    whole_bytes = json.loads(capsys.readouterr().out.splitlines()[-1])["state_bytes"]
    assert main(["consolidate", str(low), "--task", a, "--factor-rank", "4"]) == 0
    low_bytes = json.loads(capsys.readouterr().out.splitlines()[-1])["state_bytes"]
    assert low_bytes < whole_bytes
    (state,) = load_state(low)
    assert state.meta["factor_rank"] == 4
    ranks = {
        f.G.rank for f in state.curvature.values() if isinstance(f.G, LowRankFactor)
    }
    assert ranks == {4}
    code = main(
        ["train", "--task", str(tasks / "B"), "--init", str(low), "--penalty", "kfac",
         "--lam", "10", "--out", str(v2), "--epochs", "1"]
    )  # fmt: skip
    assert code == 0
    config = json.loads((v2 / "config.json").read_text())["continual"]
    assert config["damping_kind"] == "factored"
    assert json.loads((v2 / "train_log.json").read_text())["epochs"][0]["penalty"] > 0
    code = main(["consolidate", str(whole), "--task", str(tasks / "B"), "--method",
                 "ewc", "--factor-rank", "4"])  # fmt: skip
    assert code == 2
    assert "--factor-rank needs --method kfac" in capsys.readouterr().err


def test_consolidate_checks_the_history_when_the_last_task_is_not_recorded() -> None:
    """A model that records only its history: a task in it passes, another does not."""
    from pathlib import Path

    from kfacel.cli import UserError
    from kfacel.cli.consolidate import _check_trained_on

    task = Task("C", Path("C"), [], [], [])
    _check_trained_on({}, task, "m")  # nothing recorded: nothing to check
    _check_trained_on({"history": ["A", "C"]}, task, "m")
    with pytest.raises(
        UserError, match=r"m was trained on \['A', 'B'\], not on task 'C'"
    ):
        _check_trained_on({"history": ["A", "B"]}, task, "m")
    with pytest.raises(UserError, match="last trained on 'B'"):
        _check_trained_on({"task": {"name": "B"}, "history": ["C", "B"]}, task, "m")


def test_a_bit_flipped_anchor_is_named_as_damaged_not_blamed_on_lambda(
    tasks, tmp_path, capsys
) -> None:
    from safetensors.torch import load_file, save_file

    v1 = tmp_path / "v1"
    a, b = str(tasks / "A"), str(tasks / "B")
    assert main(["train", "--task", a, "--out", str(v1), *CNN, "--epochs", "1"]) == 0
    assert main(["consolidate", str(v1), "--task", a, "--method", "kfac"]) == 0
    (path,) = (v1 / "consolidation").glob("*.safetensors")
    tensors = load_file(str(path))
    name = next(k for k in sorted(tensors) if k.startswith("anchor/"))
    flipped = tensors[name].clone()
    flipped.view(torch.int32).view(-1)[0] ^= 1 << 30  # one exponent bit: finite
    save_file({**tensors, name: flipped}, str(path))
    capsys.readouterr()
    args = ["train", "--task", b, "--init", str(v1), "--penalty", "kfac"]
    assert main([*args, "--out", str(tmp_path / "v2")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: tensor '{name}' is damaged" in err
    assert "lower λ" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v2").exists()


@pytest.mark.parametrize(
    "option",
    [
        ["--lam", "10"],
        ["--lam-per-task", "A=10"],
        ["--damping", "0.1"],
        ["--damping-kind", "uniform"],
    ],
)
def test_a_strength_option_without_a_penalty_is_refused(
    tasks, tmp_path, capsys, option
) -> None:
    """Plain fine-tuning with --lam or --damping would leave A unprotected unawares."""
    out = tmp_path / "v2"
    args = ["train", "--task", str(tasks / "B"), *CNN, "--out", str(out), *option]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{option[0]} sets the penalty's strength, but --penalty is none" in err[0]
    assert not out.exists()


def test_consolidate_refuses_another_task_of_the_same_name(
    tasks, tmp_path, capsys
) -> None:
    """A task re-prepared (or another corpus) under the trained task's name: refused."""
    v1, other = tmp_path / "v1", tmp_path / "other" / "A"
    args = ["train", "--task", str(tasks / "A"), "--out", str(v1), *CNN]
    assert main([*args, "--epochs", "1"]) == 0
    splits = {
        s: code_task("A", TASK_A, n, 50 + i)
        for i, (s, n) in enumerate((("train", 64), ("dev", 32), ("test", 32)))
    }
    write_task(other, splits, {"name": "A"})
    capsys.readouterr()
    assert main(["consolidate", str(v1), "--task", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{other} is not the task {v1} was trained on" in err[0]
    assert "dev.jsonl, test.jsonl, train.jsonl differ" in err[0]
    assert not (v1 / "consolidation").exists()
    assert main(["consolidate", str(v1), "--task", str(tasks / "A")]) == 0


def test_reinit_top_on_the_cnn_is_refused_in_one_line(tasks, tmp_path, capsys) -> None:
    out = tmp_path / "v1"
    args = ["train", "--task", str(tasks / "A"), *CNN, "--out", str(out)]
    assert main([*args, "--reinit-top", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "reinit_top=1: the model has 0 transformer blocks" in err[0]
    assert not out.exists()


def test_lora_rank_on_the_cnn_or_with_init_is_refused_in_one_line(
    tasks, tmp_path, capsys
) -> None:
    out = tmp_path / "v1"
    args = ["train", "--task", str(tasks / "A"), *CNN]
    assert main([*args, "--out", str(out), "--lora-rank", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert (
        "--lora-rank adapts the transformer ranker; add --model transformer" in err[0]
    )
    assert main([*args, "--out", str(out), "--epochs", "1"]) == 0
    v2 = tmp_path / "v2"
    assert main([*args, "--out", str(v2), "--init", str(out), "--lora-rank", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{out}'s ranker keeps its own adapters" in err[0]
    assert not v2.exists()
