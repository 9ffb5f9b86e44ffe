"""CLI round trip on a tiny corpus made here: prepare → train → evaluate → link."""

import json
import shutil

import pytest
import torch

from kfacel.cli import main
from tests._synth import write_pubtator_corpus

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
         str(dictionary), "--out", str(out), "--candidates", "tfidf",
         "--num-candidates", "4", "--context-words", "3"]
    )  # fmt: skip
    assert code == 0
    return out, dictionary


@pytest.mark.parametrize(
    "model", ["cnn", pytest.param("transformer", marks=pytest.mark.slow)]
)
def test_prepare_train_evaluate_link(task_dir, tmp_path, capsys, model):
    task, dictionary = task_dir
    model_dir = tmp_path / "model"
    extra = {  # beside each ranker's size, one option of training's that it records
        "cnn": ["--hidden", "32", "--refresh", "0.1"],
        "transformer": ["--layers", "2", "--freeze-layers", "1", "--reinit-top", "1"],
    }[model]
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
    assert settings["refresh"] == (0.1 if model == "cnn" else 0.0)
    assert (settings["freeze_layers"], settings["reinit_top"]) == (
        (0, 0) if model == "cnn" else (1, 1)
    )

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
         "--threads", "1", "--precision", "float32"]
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


@pytest.fixture(scope="module")
def model_dir(task_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("linker") / "model"
    assert main(
        ["train", "--task", str(task_dir[0]), "--out", str(out), "--epochs", "1",
         "--hidden", "16", "--max-length", "24"]
    ) == 0  # fmt: skip
    return out


def _link_input(model_dir, dictionary, lines, *extra):
    inp = model_dir.parent / "q.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return main(["link", str(model_dir), "--dictionary", str(dictionary),
                 "--input", str(inp), "--threads", "1", *extra])  # fmt: skip


def test_link_records_carry_the_input_line_and_the_mentions_offsets(
    task_dir, model_dir, capsys
) -> None:
    """Each output line: 1-based input line (blank lines counted), start and end."""
    text = "aspirin then aspirin again"
    lines = [
        json.dumps({"text": text, "mention": "aspirin", "start": 13}),
        "",
        json.dumps({"text": "she has lung cancer", "mention": "lung cancer"}),
    ]
    capsys.readouterr()
    assert _link_input(model_dir, task_dir[1], lines) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    heads = [(r["line"], r["mention"], r["start"], r["end"]) for r in out]
    assert heads == [(1, "aspirin", 13, 20), (3, "lung cancer", 8, 19)]
    assert all(0 < len(r["concepts"]) <= 4 for r in out)


def test_link_on_error_skip_writes_an_error_record_per_bad_line(
    task_dir, model_dir, capsys
) -> None:
    """Bad JSON, a missing mention, a lone surrogate: skipped with a record each."""
    good = json.dumps({"text": "a heart attack", "mention": "heart attack"})
    lines = [
        good,
        "{not json",
        json.dumps({"text": "no such words", "mention": "insulin"}),
        '{"text": "a \\ud800 heparin", "mention": "heparin"}',
        good,
    ]
    capsys.readouterr()
    assert _link_input(model_dir, task_dir[1], lines) == 2  # stop is the default
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "q.jsonl:2: Expecting property name" in captured.err
    assert len(captured.err.strip().splitlines()) == 1

    assert _link_input(model_dir, task_dir[1], lines, "--on-error", "skip") == 0
    captured = capsys.readouterr()
    out = [json.loads(x) for x in captured.out.splitlines()]
    assert [r["line"] for r in out] == [1, 2, 3, 4, 5]
    assert [set(r) for r in out[1:4]] == [{"line", "error"}] * 3
    assert "not in the text" in out[2]["error"]
    assert (
        out[3]["error"]
        == "'text' is not valid text: lone surrogate U+D800 at position 2"
    )
    assert out[0]["concepts"] == out[4]["concepts"]
    assert captured.err.strip() == (
        f"warning: 3 of 5 lines of {model_dir.parent / 'q.jsonl'} skipped "
        '(their {"line", "error"} records are in the output)'
    )


def test_link_names_the_line_whose_mention_finds_no_candidate(
    task_dir, model_dir, capsys, monkeypatch
) -> None:
    """A query the generator finds nothing for: file:line, or an error record."""
    from kfacel.retrieval.tfidf import TfidfGenerator

    real = TfidfGenerator.search

    def search(self, mentions, k):
        hits = real(self, mentions, k)
        return [
            [] if m == "morphine" else h for m, h in zip(mentions, hits, strict=True)
        ]

    monkeypatch.setattr(TfidfGenerator, "search", search)
    lines = [json.dumps({"text": f"gave {m}", "mention": m})
             for m in ("insulin", "morphine")]  # fmt: skip
    capsys.readouterr()
    assert _link_input(model_dir, task_dir[1], lines) == 2
    err = capsys.readouterr().err
    assert "q.jsonl:2: no candidate found for 'morphine'" in err
    assert _link_input(model_dir, task_dir[1], lines, "--on-error", "skip") == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert out[1] == {"line": 2, "error": "no candidate found for 'morphine'"}
    assert 0 < len(out[0]["concepts"]) <= 4


def test_link_says_when_the_dictionary_cannot_be_checked(
    task_dir, model_dir, tmp_path, capsys
) -> None:
    """A model of an older kfacel (no dictionary kept, no digest): a warning, then links."""
    args = ["--dictionary", str(task_dir[1]), "--text", "an aspirin",
            "--mention", "aspirin", "--threads", "1"]  # fmt: skip
    capsys.readouterr()
    assert main(["link", str(model_dir), *args]) == 0
    assert capsys.readouterr().err == ""  # checked: nothing to say
    old = tmp_path / "old-model"
    shutil.copytree(model_dir, old)
    config = json.loads((old / "config.json").read_text())
    del config["task"]["candidates"]["dictionary_sha256"]
    del config["ontologies"]
    shutil.rmtree(old / "ontologies")
    (old / "config.json").write_text(json.dumps(config))
    assert main(["link", str(old), *args]) == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"warning: {old} records no digest of the dictionary")
    assert "is not checked" in err[0]
    assert json.loads(captured.out)["mention"] == "aspirin"


def test_link_help_documents_the_input_and_output_records(capsys) -> None:
    """`link --help` names every field of an input line and of an output record."""
    with pytest.raises(SystemExit):
        main(["link", "--help"])
    text = capsys.readouterr().out
    for field in ('"text"', '"mention"', '"start"', '"end"', '"line"', '"error"',
                  '"concepts"', "--on-error"):  # fmt: skip
        assert field in text
