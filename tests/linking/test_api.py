"""``kfacel.Linker``: links over every ontology a model learned, as ``kfacel link`` does."""

import json

import pytest

import kfacel
from kfacel.cli import main
from kfacel.linking.api import LinkedConcept, LinkResult, query

TEXT = "the patient had heart attack and headache and dizziness today"
MENTIONS = ["heart attack", "headache", "dizziness"]


def _best(results: list[LinkResult]) -> list[tuple[str, str]]:
    return [(r.best.ontology, r.best.concept_id) for r in results if r.best]


def test_a_model_updated_across_two_ontologies_links_both(two_ontologies) -> None:
    v2 = kfacel.Linker.load(two_ontologies.v2)
    assert v2.ontologies == ("medic", "meddra")
    # D001 is in both dictionaries: each result says which one it came from
    assert _best(v2.link(TEXT, MENTIONS)) == [
        ("medic", "D001"), ("meddra", "10019211"), ("meddra", "D001"),
    ]  # fmt: skip
    v1 = kfacel.Linker.load(two_ontologies.v1)
    assert v1.ontologies == ("medic",)
    assert _best(v1.link(TEXT, MENTIONS[:1])) == [("medic", "D001")]


def test_the_model_directory_keeps_each_tasks_dictionary(two_ontologies) -> None:
    config = json.loads((two_ontologies.v2 / "config.json").read_text())
    records = {o["name"]: o for o in config["ontologies"]}
    assert list(records) == ["medic", "meddra"]
    assert records["medic"]["tasks"] == ["ncbi"]
    assert records["meddra"]["tasks"] == ["cadec"]
    for name, task in (("medic", "task_a"), ("meddra", "task_b")):
        kept = two_ontologies.v2 / records[name]["file"]
        task_copy = getattr(two_ontologies, task) / "dictionary.jsonl.gz"
        assert kept.read_bytes() == task_copy.read_bytes()


def test_one_ontology_by_name_or_by_its_dictionary_file(two_ontologies) -> None:
    v2 = two_ontologies.v2
    by_name = kfacel.Linker.load(v2, ontology="meddra")
    assert by_name.ontologies == ("meddra",)
    by_file = kfacel.Linker.load(
        v2, dictionary=two_ontologies.medic
    )  # the older task's
    assert by_file.ontologies == ("medic",)
    assert _best(by_file.link(TEXT, MENTIONS[:1])) == [("medic", "D001")]
    with pytest.raises(ValueError, match=r"ontology 'mesh': .* learned medic, meddra"):
        kfacel.Linker.load(v2, ontology="mesh")
    with pytest.raises(ValueError, match="not both"):
        kfacel.Linker.load(v2, ontology="medic", dictionary=two_ontologies.medic)


def test_spans_and_strings_link_alike_and_bad_spans_are_refused(
    two_ontologies,
) -> None:
    linker = kfacel.Linker.load(two_ontologies.v2, top=2)
    start = TEXT.index("headache")
    by_span = linker.link(TEXT, [(start, start + len("headache"))])
    assert by_span == linker.link(TEXT, ["headache"])
    assert by_span[0].start == start
    assert len(by_span[0].candidates) <= 2
    assert isinstance(by_span[0].candidates[0], LinkedConcept)
    for bad, message in (((5, 500), "not inside the text"), ((3, 3), "not inside"),
                         ("migraine", "not in the text")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            linker.link(TEXT, [bad])
    assert query("a fever", (2, 7)).mention == "fever"


def test_link_batch_equals_link_per_text(two_ontologies) -> None:
    """Equal rankings; scores equal up to float32 noise (batches are padded alike)."""
    linker = kfacel.Linker.load(two_ontologies.v2)
    items = [(TEXT, MENTIONS), ("nausea and lung cancer", ["lung cancer", "nausea"])]
    batched = [r for rs in linker.link_batch(items) for r in rs]
    alone = [r for t, m in items for r in linker.link(t, m)]
    for a, b in zip(batched, alone, strict=True):
        assert (a.mention, a.start, a.end) == (b.mention, b.start, b.end)
        assert [c.concept_id for c in a.candidates] == [
            c.concept_id for c in b.candidates
        ]
        assert [c.score for c in a.candidates] == pytest.approx(
            [c.score for c in b.candidates], abs=1e-5
        )


def test_the_api_and_the_cli_rank_alike(two_ontologies, tmp_path, capsys) -> None:
    queries = tmp_path / "q.jsonl"
    items = [(TEXT, MENTIONS), ("nausea and lung cancer", ["lung cancer", "nausea"])]
    lines = [json.dumps({"text": t, "mention": m}) for t, ms in items for m in ms]
    queries.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    args = ["link", str(two_ontologies.v2), "--input", str(queries), "--top", "4"]
    assert main(args) == 0
    cli = [json.loads(line)["concepts"] for line in capsys.readouterr().out.split("\n")
           if line]  # fmt: skip
    linker = kfacel.Linker.load(two_ontologies.v2, top=4)
    api = [r for results in linker.link_batch(items) for r in results]
    assert cli == [[c.to_json() for c in r.candidates] for r in api]
    assert {c["ontology"] for row in cli for c in row} == {"medic", "meddra"}


def test_the_cli_takes_an_older_tasks_dictionary_and_an_ontology(
    two_ontologies, capsys
) -> None:
    common = ["--text", TEXT, "--mention", "heart attack"]
    v2 = str(two_ontologies.v2)
    capsys.readouterr()
    assert main(["link", v2, "--dictionary", str(two_ontologies.medic), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {c["ontology"] for c in out["concepts"]} == {"medic"}
    assert main(["link", v2, "--ontology", "meddra", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {c["ontology"] for c in out["concepts"]} == {"meddra"}
    assert main(["link", v2, "--ontology", "mesh", *common]) == 2
    assert "ontology 'mesh'" in capsys.readouterr().err
