"""Splitting: documents kept whole, seeded caps of a split's queries."""

from pathlib import Path

import pytest

from kfacel.tasks.split import split_by_document
from tests.tasks._toy import prepare_toy, toy_mention, toy_splits


def test_split_by_document_keeps_documents_whole() -> None:
    mentions = [
        toy_mention(f"d{i}", "fever", "C3") for i in range(20) for _ in range(2)
    ]
    parts = split_by_document(mentions, (0.7, 0.1, 0.2), seed=13)
    docs = [{m.doc_id for m in p} for p in parts]
    assert [len(d) for d in docs] == [14, 2, 4]
    assert sum(len(d) for d in docs) == len(set().union(*docs))
    assert split_by_document(mentions, (0.7, 0.1, 0.2), seed=13) == parts
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_document(mentions, (0.5, 0.1, 0.1), seed=0)


def test_max_queries_caps_and_samples(tmp_path: Path) -> None:
    splits = toy_splits()
    splits["train"] = [toy_mention(f"d{i}", "fever", "C3") for i in range(50)]
    info = prepare_toy(
        tmp_path / "t", splits=splits, max_queries={"train": 0.1, "dev": 5}
    )
    assert info["counts"]["train"]["queries"] == 5
    assert info["counts"]["dev"]["queries"] == 1
