"""The ``kfacel_linker`` spaCy component links ``doc.ents`` as ``kfacel.Linker`` does."""

import importlib
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

spacy = pytest.importorskip("spacy")

import kfacel  # noqa: E402
import kfacel.spacy  # noqa: E402  (registers the factory)

TEXT = "The patient had heart attack and headache, then dizziness and ---."
PATTERNS = [
    {"label": "DISEASE", "pattern": "heart attack"},
    {"label": "ADR", "pattern": "headache"},
    {"label": "ADR", "pattern": "dizziness"},
    {"label": "ADR", "pattern": "---"},  # no letter or digit: nothing to link
]


def _pipeline(model, **config):
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(PATTERNS)
    nlp.add_pipe("kfacel_linker", config={"model": str(model), **config})
    return nlp


def test_kb_ents_equal_the_linkers_results(two_ontologies) -> None:
    nlp = _pipeline(two_ontologies.v2, top=3)
    doc = nlp(TEXT)
    ents = [e for e in doc.ents if e.text != "---"]
    assert [e.text for e in ents] == ["heart attack", "headache", "dizziness"]
    linker = kfacel.Linker.load(two_ontologies.v2, top=3)
    expected = linker.link(TEXT, [(e.start_char, e.end_char) for e in ents])
    for ent, result in zip(ents, expected, strict=True):
        assert ent._.kb_ents == [(c.concept_id, c.score) for c in result.candidates]
        assert ent._.kb_concepts == list(result.candidates)
    best = [(e._.kb_concepts[0].ontology, e._.kb_ents[0][0]) for e in ents]
    assert best == [("medic", "D001"), ("meddra", "10019211"), ("meddra", "D001")]
    assert next(e for e in doc.ents if e.text == "---")._.kb_ents == []


def test_pipe_links_many_docs_as_one_by_one(two_ontologies) -> None:
    nlp = _pipeline(two_ontologies.v2, ontology="meddra")
    texts = [TEXT, "nausea again", "no entity here"]
    piped = [[e._.kb_ents for e in doc.ents] for doc in nlp.pipe(texts)]
    single = [[e._.kb_ents for e in nlp(t).ents] for t in texts]
    assert [[[i for i, _ in k] for k in d] for d in piped] == [
        [[i for i, _ in k] for k in d] for d in single
    ]
    assert all(c.ontology == "meddra" for e in nlp(TEXT).ents for c in e._.kb_concepts)


def test_the_component_needs_a_model_directory() -> None:
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="give the model directory"):
        nlp.add_pipe("kfacel_linker")


def test_import_kfacel_does_not_import_spacy() -> None:
    code = "import sys, kfacel; kfacel.Linker; assert 'spacy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_factory_is_an_entry_point_spacy_finds() -> None:
    """The pyproject names the factory; installed, spaCy finds it without an import."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    target = project["entry-points"]["spacy_factories"]["kfacel_linker"]
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is kfacel.spacy.make_linker
    installed = entry_points(group="spacy_factories", name="kfacel_linker")
    if not installed or next(iter(installed)).value != target:
        pytest.skip("kfacel is not installed from this pyproject (pip install -e .)")
    code = (
        "import sys, spacy; spacy.blank('en').get_factory_meta('kfacel_linker'); "
        "assert 'kfacel.spacy' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
