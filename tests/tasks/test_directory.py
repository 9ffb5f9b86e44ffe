"""Task directories: load errors, refused outputs, whole replacements."""

import json
from pathlib import Path

import pytest

from kfacel.tasks.directory import check_task_out, load_task, write_task
from tests.tasks._toy import prepare_toy


def test_retrieved_must_be_a_boolean(tmp_path: Path) -> None:
    prepare_toy(tmp_path / "t")
    dev = tmp_path / "t" / "dev.jsonl"
    obj = json.loads(dev.read_text(encoding="utf-8"))
    dev.write_text(json.dumps({**obj, "retrieved": "yes"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: 'retrieved' must be true"):
        load_task(tmp_path / "t")
    del obj["retrieved"]  # a task from another tool: unknown, not an error
    dev.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    assert load_task(tmp_path / "t").dev[0].retrieved is None


def test_a_candidates_synonym_round_trips_and_must_be_text(tmp_path: Path) -> None:
    prepare_toy(tmp_path / "t")
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


def test_load_task_names_file_and_line_of_a_bad_line(tmp_path: Path) -> None:
    prepare_toy(tmp_path / "t")
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


# --- duplicates refused, directories replaced whole or not at all -------------------


def test_duplicate_candidate_id_is_refused_with_file_and_line(tmp_path: Path) -> None:
    """The gold listed twice in a task line: refused naming file and line."""
    prepare_toy(tmp_path / "t")
    dev = tmp_path / "t" / "dev.jsonl"
    line = json.loads(dev.read_text(encoding="utf-8").splitlines()[0])
    line["candidates"].append(dict(line["candidates"][0]))
    dev.write_text(dev.read_text("utf-8") + json.dumps(line) + "\n", "utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl:2: candidate id '\w+' appears"):
        load_task(tmp_path / "t")


def test_task_files_with_a_bom_load(tmp_path: Path) -> None:
    """task.json and a split with a UTF-8 BOM load like the files without it."""
    prepare_toy(tmp_path / "t")
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
        prepare_toy(out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_write_task_replaces_a_task_whole_with_the_umask(tmp_path: Path) -> None:
    """A rewrite replaces the task; the directory gets 0777 less the umask, not 0700."""
    import os

    old = os.umask(0o022)
    try:
        prepare_toy(tmp_path / "t")
        prepare_toy(tmp_path / "t", seed=6)
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
    from kfacel.tasks import directory

    prepare_toy(tmp_path / "t")
    before = (tmp_path / "t" / "train.jsonl").read_bytes()

    def interrupted(path: Path, text: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(directory, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_toy(tmp_path / "t", seed=6)
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
        prepare_toy(out)
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
    prepare_toy(tmp_path / "t")
    check_task_out(tmp_path / "t", overwrite=True)


def test_check_task_out_refuses_an_out_under_a_file(tmp_path: Path) -> None:
    """`--out FILE/sub`: refused up front, not after the work."""
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a writable directory"):
        check_task_out(tmp_path / "f" / "sub" / "t")


def test_a_task_keeps_its_dictionary_and_can_be_replaced(tmp_path: Path) -> None:
    from kfacel.retrieval.ontology import read_ontology
    from kfacel.tasks.directory import DICTIONARY_FILE
    from tests.tasks._toy import CONCEPTS

    out = tmp_path / "task"
    prepare_toy(out)
    task = load_task(out)
    assert task.dictionary == out / DICTIONARY_FILE
    assert read_ontology(task.dictionary) == list(CONCEPTS)
    first = task.dictionary.read_bytes()
    check_task_out(out, overwrite=True)  # the file is the task's own
    prepare_toy(out)
    assert (out / DICTIONARY_FILE).read_bytes() == first  # equal inputs, equal bytes
