"""``kfacel prepare`` round trips: files written, loadable, identical when re-run."""

import json
from pathlib import Path

import pytest

from kfacel.cli import main
from kfacel.tasks.directory import load_task

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "task.json")


def _corpus(tmp_path: Path, docs: int = 20) -> Path:
    """A PubTator corpus of ``docs`` one-mention documents over the fixture MEDIC."""
    names = ["diabetes mellitus", "huntington disease", "breast cancer", "pain", "dm"]
    ids = ["D003920", "OMIM:143100", "D001943", "D010146", "D003920"]
    lines = []
    for d in range(docs):
        name, cid = names[d % 5], ids[d % 5]
        title = f"Study {d} of {name} in adults."
        start = title.index(name)
        lines += [
            f"{1000 + d}|t|{title}",
            f"{1000 + d}|a|Results were mixed.",
            f"{1000 + d}\t{start}\t{start + len(name)}\t{name}\tDisease\t{cid}",
            "",
        ]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_prepare_pubtator_corpus_round_trip_is_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path)
    args = ["prepare", "pubtator", "--corpus", str(corpus), "--dictionary"]
    args += [str(FIXTURES / "medic.txt"), "--num-candidates", "3", "--seed", "4"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "train" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--name", "a"]) == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (
            tmp_path / "b" / name
        ).read_bytes()
    task = load_task(tmp_path / "a")
    assert [len(task.train), len(task.dev), len(task.test)] == [14, 2, 4]
    assert task.info["candidates"]["num_candidates"] == 3


def test_candidates_carry_the_synonym_closest_to_the_mention(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, docs=10)
    args = ["prepare", "pubtator", "--corpus", str(corpus), "--dictionary"]
    args += [str(FIXTURES / "medic.txt"), "--num-candidates", "3"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    out_p = ["--out", str(tmp_path / "p"), "--candidate-names", "preferred"]
    assert main([*args, *out_p]) == 0
    closest, preferred = load_task(tmp_path / "s"), load_task(tmp_path / "p")
    assert closest.info["candidates"]["synonyms"] is True
    assert preferred.info["candidates"]["synonyms"] is False
    by_mention = {}
    for ex in closest.train:
        gold = ex.candidates[ex.gold_index]
        by_mention[ex.mention] = (gold.name, gold.synonym)
    # MEDIC's "Breast Cancer" is a synonym of the preferred "Breast Neoplasms"
    assert by_mention["breast cancer"] == ("Breast Neoplasms", "Breast Cancer")
    assert by_mention["diabetes mellitus"] == ("Diabetes Mellitus", None)
    assert all(c.synonym is None for ex in preferred.train for c in ex.candidates)
    line = (tmp_path / "s" / "train.jsonl").read_text(encoding="utf-8")
    assert '"synonym": "Breast Cancer"' in line


def test_prepare_pubtator_explicit_splits_and_bm25(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, docs=5)
    code = main(
        [
            "prepare",
            "pubtator",
            "--train",
            str(corpus),
            "--dev",
            str(corpus),
            "--test",
            str(corpus),
            "--dictionary",
            str(FIXTURES / "medic.txt"),
            "--candidates",
            "bm25",
            "--context-words",
            "1",
            "--out",
            str(tmp_path / "t"),
        ]
    )
    assert code == 0
    info = json.loads((tmp_path / "t" / "task.json").read_text(encoding="utf-8"))
    assert info["candidates"]["method"] == "bm25"
    assert info["counts"]["train"]["queries"] == 5
    first = load_task(tmp_path / "t").train[0]
    assert (first.left_context, first.right_context) == ("of", "in")


def test_prepare_jsonl_uses_the_given_splits(tmp_path: Path) -> None:
    code = main(
        [
            "prepare",
            "jsonl",
            "--input",
            str(FIXTURES / "mentions.jsonl"),
            "--dictionary",
            str(FIXTURES / "dict.tsv"),
            "--out",
            str(tmp_path / "j"),
            "--num-candidates",
            "2",
        ]
    )
    # C0008031 and C0000009 are absent from dict.tsv: train is empty
    assert code == 2
    assert not (tmp_path / "j" / "task.json").exists()


def test_prepare_user_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path)
    base = ["prepare", "pubtator", "--dictionary", str(FIXTURES / "medic.txt")]
    base += ["--out", str(tmp_path / "x")]
    assert main([*base, "--corpus", str(corpus), "--split-by-document", "1,1,1"]) == 2
    assert "--split-by-document" in capsys.readouterr().err
    assert main([*base, "--train", str(corpus)]) == 2
    assert main([*base, "--corpus", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert (
        main(["prepare", "benchmark", "--data", str(tmp_path / "no"), "--out", "x"])
        == 2
    )


def test_prepare_jsonl_round_trip(tmp_path: Path) -> None:
    dictionary = tmp_path / "dict.tsv"
    rows = ["C0008031\tChest Pain", "C0000009\tMonday", "C0015967\tFever"]
    rows += ["C0015230\tExanthema", "C0000001\tHeadache"]
    dictionary.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")
    code = main(
        [
            "prepare",
            "jsonl",
            "--input",
            str(FIXTURES / "mentions.jsonl"),
            "--dictionary",
            str(dictionary),
            "--out",
            str(tmp_path / "j"),
            "--num-candidates",
            "3",
            "--context-words",
            "2",
        ]
    )
    assert code == 0
    task = load_task(tmp_path / "j")
    assert [e.mention for e in task.train] == ["chest pain", "Monday"]
    assert [e.gold for e in task.dev + task.test] == ["C0015967", "C0015230"]
    assert task.train[0].left_context == "Patient reports"
    skipped = task.info["skipped"]["skipped"]
    assert skipped["mention not found in its text"]["count"] == 1


def _composite_input(tmp_path: Path) -> tuple[Path, Path]:
    """Mentions of which two have several concept ids, and their dictionary."""
    dictionary = tmp_path / "dict.tsv"
    names = ["fever", "cough", "rash", "pain"]
    dictionary.write_text(
        "".join(f"C{i}\t{n}\n" for i, n in enumerate(names)), encoding="utf-8"
    )
    lines = []
    for d in range(12):
        name = names[d % 4]
        ids = f'"C{d % 4}|C{(d + 1) % 4}"' if d in (3, 7) else f'"C{d % 4}"'
        text = f"Patient {d} has {name} today."
        lines.append(
            f'{{"doc_id": "d{d}", "text": "{text}", "mention": "{name}", '
            f'"concept_id": {ids}}}'
        )
    mentions = tmp_path / "m.jsonl"
    mentions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return mentions, dictionary


def test_prepare_jsonl_refuses_composite_mentions_naming_count_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mentions, dictionary = _composite_input(tmp_path)
    args = ["prepare", "jsonl", "--input", str(mentions)]
    args += ["--dictionary", str(dictionary), "--num-candidates", "2"]
    assert main([*args, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kfacel prepare: error: {mentions}:4: 2 mentions with ")
    assert "--composite skip" in err
    assert "\n" not in err
    assert not (tmp_path / "t").exists()
    assert main([*args, "--out", str(tmp_path / "t"), "--composite", "skip"]) == 0
    skipped = json.loads((tmp_path / "t" / "task.json").read_text())["skipped"]
    reason = skipped["skipped"]["composite mention (several concept ids)"]
    assert reason == {"count": 2, "first": f"{mentions}:4"}
    assert "skipped: 2 × composite mention" in capsys.readouterr().out


def test_prepare_names_a_swapped_dictionary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mentions, dictionary = _composite_input(tmp_path)
    swapped = tmp_path / "swapped.tsv"
    rows = [line.split("\t") for line in dictionary.read_text().splitlines()]
    swapped.write_text("".join(f"{n}\t{i}\n" for i, n in rows), encoding="utf-8")
    args = ["prepare", "jsonl", "--input", str(mentions), "--composite", "skip"]
    args += ["--dictionary", str(swapped), "--out", str(tmp_path / "t")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{swapped}:1: the first column looks like names" in err
