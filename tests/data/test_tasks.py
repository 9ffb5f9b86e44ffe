"""Task directories: policy, context, splits, identical rewrites, load errors."""

import json
from pathlib import Path

import pytest

from kfacel.data.readers import read_dictionary, read_pubtator
from kfacel.data.records import Concept, Mention, SkipReport
from kfacel.data.tasks import (
    check_task_out,
    context,
    load_task,
    prepare_task,
    split_by_document,
    write_task,
)

CONCEPTS = [
    Concept("C1", ("chest pain",), "T184"),
    Concept("C2", ("headache",), "T184"),
    Concept("C3", ("fever",), "T184"),
    Concept("C4", ("nausea",), "T184"),
]


def _mention(doc: str, surface: str, cid: str, line: int = 1) -> Mention:
    text = f"the patient had {surface} on day one of the trial"
    start = text.index(surface)
    return Mention(
        doc, text, ((start, start + len(surface)),), surface, (cid,), line=line
    )


def _splits() -> dict[str, list[Mention]]:
    return {
        "train": [_mention("d1", "chest pain", "C1"), _mention("d2", "headache", "C2")],
        "dev": [_mention("d3", "fever", "C3"), _mention("d3", "fever", "C9")],
        "test": [
            _mention("d4", "nausea", "C4"),
            Mention("d4", "x y", ((0, 1),), "x", ("C1", "C2")),
        ],
    }


def _prepare(out: Path, **kw: object) -> dict:
    args = {
        "name": "toy",
        "splits": _splits(),
        "concepts": CONCEPTS,
        "method": "tfidf",
        "num_candidates": 3,
        "context_words": 2,
        "seed": 5,
    }
    args.update(kw)
    return prepare_task(out, **args)  # type: ignore[arg-type]


def test_context_takes_k_words_each_side() -> None:
    text = "one two three MENTION four five six"
    assert context(text, [(14, 21)], 2) == ("two three", "four five")
    assert context(text, [(14, 21)], 0) == ("", "")
    assert context("a b c d e", [(0, 1), (8, 9)], 5) == ("", "")  # discontiguous


def test_split_by_document_keeps_documents_whole() -> None:
    mentions = [_mention(f"d{i}", "fever", "C3") for i in range(20) for _ in range(2)]
    parts = split_by_document(mentions, (0.7, 0.1, 0.2), seed=13)
    docs = [{m.doc_id for m in p} for p in parts]
    assert [len(d) for d in docs] == [14, 2, 4]
    assert sum(len(d) for d in docs) == len(set().union(*docs))
    assert split_by_document(mentions, (0.7, 0.1, 0.2), seed=13) == parts
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_document(mentions, (0.5, 0.1, 0.1), seed=0)


def test_prepare_writes_a_loadable_task_and_counts_skips(tmp_path: Path) -> None:
    info = _prepare(tmp_path / "toy")
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


def test_retrieved_must_be_a_boolean(tmp_path: Path) -> None:
    _prepare(tmp_path / "t")
    dev = tmp_path / "t" / "dev.jsonl"
    obj = json.loads(dev.read_text(encoding="utf-8"))
    dev.write_text(json.dumps({**obj, "retrieved": "yes"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: 'retrieved' must be true"):
        load_task(tmp_path / "t")
    del obj["retrieved"]  # a task from another tool: unknown, not an error
    dev.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    assert load_task(tmp_path / "t").dev[0].retrieved is None


def test_a_candidates_synonym_round_trips_and_must_be_text(tmp_path: Path) -> None:
    _prepare(tmp_path / "t")
    dev = tmp_path / "t" / "dev.jsonl"
    obj = json.loads(dev.read_text(encoding="utf-8").splitlines()[0])
    obj["candidates"][0]["synonym"] = "another name"
    dev.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    cand = load_task(tmp_path / "t").dev[0].candidates[0]
    assert (cand.synonym, cand.text) == ("another name", "another name")
    assert cand.to_json()["synonym"] == "another name"
    obj["candidates"][0]["synonym"] = 3
    dev.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: a candidate's 'synonym'"):
        load_task(tmp_path / "t")


def test_prepare_is_byte_identical_when_repeated(tmp_path: Path) -> None:
    _prepare(tmp_path / "a")
    _prepare(tmp_path / "b")
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "task.json"):
        assert (tmp_path / "a" / name).read_bytes() == (
            tmp_path / "b" / name
        ).read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_empty_split_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    splits = _splits()
    splits["dev"] = [_mention("d3", "fever", "C9")]
    with pytest.raises(ValueError, match="split 'dev' has no usable mention"):
        _prepare(tmp_path / "t", splits=splits)
    assert not (tmp_path / "t").exists()


def test_max_queries_caps_and_samples(tmp_path: Path) -> None:
    splits = _splits()
    splits["train"] = [_mention(f"d{i}", "fever", "C3") for i in range(50)]
    info = _prepare(tmp_path / "t", splits=splits, max_queries={"train": 0.1, "dev": 5})
    assert info["counts"]["train"]["queries"] == 5
    assert info["counts"]["dev"]["queries"] == 1


def test_load_task_names_file_and_line_of_a_bad_line(tmp_path: Path) -> None:
    _prepare(tmp_path / "t")
    dev = tmp_path / "t" / "dev.jsonl"
    dev.write_text(dev.read_text(encoding="utf-8") + '{"mention": "x"}\n', "utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl:2: missing field"):
        load_task(tmp_path / "t")
    dev.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl: the split has no query"):
        load_task(tmp_path / "t")
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "missing")


def test_write_task_refuses_an_empty_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'train' is empty"):
        write_task(tmp_path / "t", {"train": [], "dev": [], "test": []}, {})


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
        method="tfidf",
        num_candidates=3,
        context_words=3,
        seed=0,
        skips=skips,
    )
    task = load_task(tmp_path / "t")
    # diabetes (D003920) and both Huntington mentions (OMIM:143100 -> D006816)
    assert [e.gold for e in task.train] == ["D003920", "D006816", "D006816"]
    skipped = info["skipped"]["skipped"]
    assert skipped["composite mention (several concept ids)"]["count"] == 6
    assert skipped["gold concept not in the dictionary"]["count"] == 6


# --- issue 13: duplicates refused, directories replaced whole or not at all ----------


def test_duplicate_candidate_id_is_refused_with_file_and_line(tmp_path: Path) -> None:
    """The gold listed twice in a task line: refused naming file and line."""
    _prepare(tmp_path / "t")
    dev = tmp_path / "t" / "dev.jsonl"
    line = json.loads(dev.read_text(encoding="utf-8").splitlines()[0])
    line["candidates"].append(dict(line["candidates"][0]))
    dev.write_text(dev.read_text("utf-8") + json.dumps(line) + "\n", "utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl:2: candidate id '\w+' appears"):
        load_task(tmp_path / "t")


def test_task_files_with_a_bom_load(tmp_path: Path) -> None:
    """task.json and a split with a UTF-8 BOM load like the files without it."""
    _prepare(tmp_path / "t")
    plain = load_task(tmp_path / "t")
    for name in ("task.json", "train.jsonl"):
        f = tmp_path / "t" / name
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    again = load_task(tmp_path / "t")
    assert again.name == plain.name
    assert again.train == plain.train


def test_write_task_refuses_a_directory_that_is_not_a_task(tmp_path: Path) -> None:
    """A non-empty non-task directory is kept as it was; no temporary is left."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError, match="not a kfacel task directory"):
        _prepare(out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_write_task_replaces_a_task_whole_with_the_umask(tmp_path: Path) -> None:
    """A rewrite replaces the task; the directory gets 0777 less the umask, not 0700."""
    import os

    old = os.umask(0o022)
    try:
        _prepare(tmp_path / "t")
        _prepare(tmp_path / "t", seed=6)
    finally:
        os.umask(old)
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "t" / "task.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "t" / "task.json").read_text("utf-8"))["seed"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_an_interrupted_write_leaves_the_old_task_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while writing: the old task is intact, the hidden temporary is gone."""
    from kfacel.data import tasks

    _prepare(tmp_path / "t")
    before = (tmp_path / "t" / "train.jsonl").read_bytes()

    def interrupted(path: Path, text: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path / "t", seed=6)
    assert (tmp_path / "t" / "train.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


@pytest.mark.parametrize(
    ("setup", "inputs", "overwrite", "message"),
    [
        ("input", ["t/in.jsonl"], True, "holds the input"),
        ("none", ["t"], True, "holds the input"),
        ("file", [], True, "is not a directory"),
        ("other", [], True, "not a kfacel task directory"),
        ("task", [], False, "already holds a task; give --overwrite"),
        ("task+extra", [], True, "not part of a task"),
    ],
)
def test_check_task_out_refuses_what_would_lose_data(
    tmp_path: Path, setup: str, inputs: list[str], overwrite: bool, message: str
) -> None:
    """Each placement of --out that would destroy data is refused before any work."""
    out = tmp_path / "t"
    if setup == "input":
        out.mkdir()
        (out / "in.jsonl").write_text("{}", encoding="utf-8")
    elif setup == "file":
        out.write_text("x", encoding="utf-8")
    elif setup == "other":
        out.mkdir()
        (out / "a.txt").write_text("x", encoding="utf-8")
    elif setup.startswith("task"):
        _prepare(out)
        if setup == "task+extra":
            (out / "README").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        check_task_out(out, inputs=[tmp_path / i for i in inputs], overwrite=overwrite)


def test_check_task_out_accepts_new_empty_and_overwritten_tasks(
    tmp_path: Path,
) -> None:
    """Absent, empty, and a task with overwrite are all accepted."""
    check_task_out(tmp_path / "new", inputs=[tmp_path / "x.jsonl"])
    (tmp_path / "empty").mkdir()
    check_task_out(tmp_path / "empty")
    _prepare(tmp_path / "t")
    check_task_out(tmp_path / "t", overwrite=True)


def test_check_task_out_refuses_an_out_under_a_file(tmp_path: Path) -> None:
    """`--out FILE/sub`: refused up front, not after the work."""
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a writable directory"):
        check_task_out(tmp_path / "f" / "sub" / "t")
