"""Ranking metrics against hand-computed ranks: ties count wrong, padding ignored."""

import pytest
import torch

from kfacel.linking.evaluate import gold_ranks, metrics_from_ranks


def test_ranks_are_pessimistic_on_ties_and_ignore_padding():
    logits = torch.tensor(
        [
            [3.0, 1.0, 2.0],  # gold 0 alone on top: rank 1
            [2.0, 2.0, 1.0],  # gold 1 tied with 0: rank 2
            [1.0, 0.0, float("-inf")],  # gold 1 below 0, padding ignored: rank 2
            [5.0, 1.0, 9.0],  # gold 1, candidate 2 is padding: rank 2
        ]
    )
    labels = torch.tensor([0, 1, 1, 1])
    valid = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    assert gold_ranks(logits, labels, valid).tolist() == [1, 2, 2, 2]


def test_all_equal_scores_get_no_credit():
    logits = torch.zeros(5, 4)
    ranks = gold_ranks(logits, torch.zeros(5, dtype=torch.long))
    assert metrics_from_ranks(ranks).accuracy == 0.0


def test_a_nan_score_is_wrong():
    logits = torch.tensor([[float("nan"), 0.0]])
    assert gold_ranks(logits, torch.tensor([0])).tolist() == [2]


def test_metrics_match_hand_computed_values():
    m = metrics_from_ranks(torch.tensor([1, 2, 4, 1]), ks=(1, 2, 5))
    assert m.accuracy == 0.5
    assert m.mrr == pytest.approx((1 + 0.5 + 0.25 + 1) / 4)
    assert m.recall == {1: 0.5, 2: 0.75, 5: 1.0}
    assert m.to_json()["recall@2"] == 0.75
    assert m.n == 4


def test_retrieved_gold_numbers_match_hand_computed_values():
    """Retrieved-gold numbers of ranks 1, 2, 1, 1 with the third query's gold inserted.

    Accuracy on retrieved = 2/3; end to end = 2/4 (the third is right but inserted).
    """
    ranks = torch.tensor([1, 2, 1, 1])
    retrieved = torch.tensor([True, True, False, True])
    m = metrics_from_ranks(ranks, retrieved=retrieved)
    assert m.accuracy == 0.75
    assert m.retrieved == 0.75
    assert m.accuracy_retrieved == pytest.approx(2 / 3)
    assert m.accuracy_end_to_end == 0.5
    assert m.to_json()["accuracy_end_to_end"] == 0.5
    none = metrics_from_ranks(ranks, retrieved=torch.zeros(4, dtype=torch.bool))
    assert (none.accuracy_retrieved, none.accuracy_end_to_end) == (None, 0.0)
    assert "retrieved" not in metrics_from_ranks(ranks).to_json()
    with pytest.raises(ValueError, match="bool tensor"):
        metrics_from_ranks(ranks, retrieved=torch.tensor([1, 1, 0, 1]))
