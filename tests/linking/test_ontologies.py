"""What training records of a task's dictionary, and what ``link`` searches."""

import json
import shutil

import pytest

from kfacel.linking.ontologies import search_dictionary, task_ontology
from kfacel.retrieval.ontology import Ontology
from kfacel.tasks.directory import DICTIONARY_FILE, load_task


def _older_task(task, tmp_path, source):
    """``task`` as an older kfacel wrote it: no dictionary file, ``source`` recorded."""
    old = tmp_path / "old-task"
    shutil.copytree(task, old)
    (old / DICTIONARY_FILE).unlink()
    info = json.loads((old / "task.json").read_text())
    info["sources"][-1] = str(source)
    (old / "task.json").write_text(json.dumps(info))
    return load_task(old)


def test_a_task_keeps_its_dictionary(two_ontologies) -> None:
    ontology = task_ontology(load_task(two_ontologies.task_a))
    assert ontology is not None
    assert (ontology.name, ontology.tasks) == ("medic", ("ncbi",))
    assert ontology.file == two_ontologies.task_a / DICTIONARY_FILE
    assert [c.id for c in ontology.concepts()] == ["D001", "D002", "D003", "D004"]


def test_an_older_task_falls_back_to_its_dictionary_file_or_its_digest(
    two_ontologies, tmp_path, caplog
) -> None:
    task = _older_task(two_ontologies.task_a, tmp_path, two_ontologies.medic)
    ontology = task_ontology(task)
    assert ontology is not None
    assert ontology.loaded is not None  # read from its source: the digest is equal
    moved = _older_task(two_ontologies.task_a, tmp_path / "b", tmp_path / "gone.tsv")
    digest_only = task_ontology(moved)
    assert digest_only is not None
    assert not digest_only.stored
    assert "by digest only" in caplog.text
    with pytest.raises(ValueError, match="keeps no dictionary"):
        search_dictionary([digest_only], where="m")


def test_a_dictionary_the_model_did_not_learn_is_refused(two_ontologies) -> None:
    learned = [Ontology("meddra", "f" * 64, 4, ("cadec",))]
    with pytest.raises(ValueError, match=r"medic\.tsv \(4 concepts\) differs from"):
        search_dictionary(learned, dictionary=two_ontologies.medic, where="m")


def test_an_older_model_takes_a_dictionary_unchecked_with_a_warning(
    two_ontologies,
) -> None:
    said: list[str] = []
    found = search_dictionary([], dictionary=two_ontologies.medic, warn=said.append)
    assert len(found.concepts) == 4
    assert len(said) == 1
    assert "is not checked" in said[0]
