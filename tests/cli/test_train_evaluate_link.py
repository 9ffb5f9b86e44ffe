"""CLI round trip on a tiny corpus made here: prepare → train → evaluate → link."""

import json

import pytest
import torch
from tests._synth import write_pubtator_corpus

from kfacel.cli import main

CONCEPTS = {
    "D001": ("heart attack", "Disease"),
    "D002": ("lung cancer", "Disease"),
    "D003": ("kidney failure", "Disease"),
    "D004": ("liver disease", "Disease"),
    "C001": ("aspirin", "Chemical"),
    "C002": ("insulin", "Chemical"),
    "C003": ("heparin", "Chemical"),
    "C004": ("morphine", "Chemical"),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    corpus, dictionary = root / "corpus.txt", root / "dict.tsv"
    surfaces = {cid: (typ, [name]) for cid, (name, typ) in CONCEPTS.items()}
    write_pubtator_corpus(corpus, surfaces, n_docs=40, seed=0)
    dictionary.write_text(
        "".join(f"{cid}\t{typ}\t{name}\n" for cid, (name, typ) in CONCEPTS.items()),
        encoding="utf-8",
    )
    out = root / "task"
    code = main(
        ["prepare", "pubtator", "--corpus", str(corpus), "--dictionary",
         str(dictionary), "--out", str(out), "--num-candidates", "4",
         "--context-words", "3"]
    )  # fmt: skip
    assert code == 0
    return out, dictionary


@pytest.mark.parametrize(
    "model", ["cnn", pytest.param("transformer", marks=pytest.mark.slow)]
)
def test_prepare_train_evaluate_link(task_dir, tmp_path, capsys, model):
    task, dictionary = task_dir
    model_dir = tmp_path / "model"
    extra = ["--hidden", "32"] if model == "cnn" else ["--layers", "1"]
    assert main(
        ["train", "--task", str(task), "--model", model, "--out", str(model_dir),
         "--epochs", "2", "--batch-size", "16", "--max-length", "24", *extra,
         "--schedule", "linear", "--warmup", "0.1", "--dropout", "0.2"]
    ) == 0  # fmt: skip
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "train_log.json", "vocab.txt"} <= names
    train_log = json.loads((model_dir / "train_log.json").read_text())
    assert train_log["best_epoch"] >= 1
    assert train_log["epochs"][-1]["lr"] < train_log["epochs"][0]["lr"]  # decayed
    written = json.loads((model_dir / "config.json").read_text())
    assert written["config"]["dropout"] == 0.2
    settings = written["training"]
    assert settings["schedule"] == "linear"
    assert settings["warmup"] == 0.1

    out = tmp_path / "eval.json"
    assert main(
        ["evaluate", str(model_dir), "--task", str(task), "--output", str(out)]
    ) == 0  # fmt: skip
    results = json.loads(out.read_text())
    r = results["task"]
    assert set(r) >= {"accuracy", "mrr", "recall@1", "n", "accuracy_end_to_end"}
    assert 0.0 <= r["accuracy"] <= 1.0
    # end to end counts only retrieved golds ranked first: never above either part
    assert r["accuracy_end_to_end"] <= min(r["accuracy"], r["retrieved"]) + 1e-12

    capsys.readouterr()
    assert main(
        ["link", str(model_dir), "--dictionary", str(dictionary), "--text",
         "the patient had a heart attack yesterday", "--mention", "heart attack",
         "--threads", "1"]
    ) == 0  # fmt: skip
    linked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert linked["mention"] == "heart attack"
    ids = [c["id"] for c in linked["concepts"]]
    assert 0 < len(ids) == len(set(ids)) <= 4  # only concepts with a shared 3-gram
    scores = [c["score"] for c in linked["concepts"]]
    assert scores == sorted(scores, reverse=True)
    assert main(
        ["link", str(model_dir), "--dictionary", str(dictionary), "--text",
         "the patient had a heart attack yesterday", "--mention", "heart attack",
         "--threads", "1", "--precision", "bfloat16"]
    ) == 0  # fmt: skip
    low = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["concepts"]
    by_id = {c["id"]: c["score"] for c in low}
    assert set(by_id) == set(ids)  # the same candidates, scored in bfloat16:
    full = [c["score"] for c in linked["concepts"]]
    assert [by_id[i] for i in ids] != full  # not float32's scores,
    torch.testing.assert_close(  # but within bfloat16's precision of them
        torch.tensor([by_id[i] for i in ids]), torch.tensor(full), atol=0.1, rtol=0.02
    )


def test_train_refuses_a_warmup_or_dropout_outside_0_1(task_dir, tmp_path, capsys):
    code = main(
        ["train", "--task", str(task_dir[0]), "--out", str(tmp_path / "m"),
         "--schedule", "linear", "--warmup", "1.5"]
    )  # fmt: skip
    assert code == 2
    assert "--warmup" in capsys.readouterr().err
    code = main(
        ["train", "--task", str(task_dir[0]), "--out", str(tmp_path / "m"),
         "--dropout", "1.0"]
    )  # fmt: skip
    assert code == 2
    assert "--dropout" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_link_refuses_a_mention_that_is_not_in_the_text(tmp_path, capsys):
    code = main(
        ["link", str(tmp_path), "--dictionary", str(tmp_path / "d.tsv"),
         "--text", "no such words", "--mention", "heart attack"]
    )  # fmt: skip
    assert code == 2
    assert "not in the text" in capsys.readouterr().err
