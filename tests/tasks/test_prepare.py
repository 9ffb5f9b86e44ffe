"""Task preparation: policy, context, counts, identical rewrites, a corpus to a task."""

import json
from pathlib import Path

import pytest

from kfacel.data.readers import read_dictionary, read_pubtator
from kfacel.data.records import SkipReport
from kfacel.tasks.directory import load_task
from kfacel.tasks.prepare import TaskSettings, context, prepare_task
from tests.tasks._toy import prepare_toy, toy_mention, toy_splits


def test_context_takes_k_words_each_side() -> None:
    text = "one two three MENTION four five six"
    assert context(text, [(14, 21)], 2) == ("two three", "four five")
    assert context(text, [(14, 21)], 0) == ("", "")
    assert context("a b c d e", [(0, 1), (8, 9)], 5) == ("", "")  # discontiguous


def test_prepare_writes_a_loadable_task_and_counts_skips(tmp_path: Path) -> None:
    info = prepare_toy(tmp_path / "toy")
    task = load_task(tmp_path / "toy")
    assert task.name == "toy"
    assert [len(task.train), len(task.dev), len(task.test)] == [2, 1, 1]
    ex = task.train[0]
    assert ex.mention == "chest pain"
    assert (ex.left_context, ex.right_context) == ("patient had", "on day")
    assert len(ex.candidates) == 3
    assert ex.candidates[ex.gold_index].id == "C1"
    assert ex.candidates[0].semantic_type == "T184"
    assert info["skipped"]["skipped"] == {
        "composite mention (several concept ids)": {"count": 1, "first": "d4"},
        "gold concept not in the dictionary": {"count": 1, "first": "d3"},
    }
    assert info["counts"]["dev"] == {"mentions": 2, "queries": 1, "documents": 1}
    assert set(info["generator"]["train"]) == {
        "queries",
        "recall@1",
        "recall@3",
        "accuracy@1",
    }
    saved = json.loads((tmp_path / "toy" / "task.json").read_text(encoding="utf-8"))
    assert saved == info == task.info
    line = (
        (tmp_path / "toy" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    )
    assert list(json.loads(line)) == sorted(json.loads(line))
    # every query says whether the generator retrieved its gold; the count is recall@C
    for split in ("train", "dev", "test"):
        found = [ex.retrieved for ex in task.split(split)]
        assert all(isinstance(f, bool) for f in found)
        assert sum(found) == round(info["generator"][split]["recall@3"] * len(found))
    assert json.loads(line)["retrieved"] is task.train[0].retrieved


def test_prepare_is_byte_identical_when_repeated(tmp_path: Path) -> None:
    prepare_toy(tmp_path / "a")
    prepare_toy(tmp_path / "b")
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "task.json"):
        assert (tmp_path / "a" / name).read_bytes() == (
            tmp_path / "b" / name
        ).read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_empty_split_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    splits = toy_splits()
    splits["dev"] = [toy_mention("d3", "fever", "C9")]
    with pytest.raises(ValueError, match="split 'dev' has no usable mention"):
        prepare_toy(tmp_path / "t", splits=splits)
    assert not (tmp_path / "t").exists()


def test_fixture_corpus_to_task_with_medic_alternative_ids(
    fixtures: Path, tmp_path: Path
) -> None:
    skips = SkipReport()
    concepts = read_dictionary(fixtures / "medic.txt", skips=skips)
    mentions = list(read_pubtator(fixtures / "mini_pubtator.txt", skips=skips))
    splits = {"train": mentions, "dev": mentions, "test": mentions}
    info = prepare_task(
        tmp_path / "t",
        name="mini",
        splits=splits,
        concepts=concepts,
        settings=TaskSettings(
            method="tfidf", num_candidates=3, context_words=3, seed=0
        ),
        skips=skips,
    )
    task = load_task(tmp_path / "t")
    # diabetes (D003920) and both Huntington mentions (OMIM:143100 -> D006816)
    assert [e.gold for e in task.train] == ["D003920", "D006816", "D006816"]
    skipped = info["skipped"]["skipped"]
    assert skipped["composite mention (several concept ids)"]["count"] == 6
    assert skipped["gold concept not in the dictionary"]["count"] == 6
