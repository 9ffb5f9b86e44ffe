"""Tokenizer: mention markers by id, truncation keeps the mention, names get CLS/SEP."""

import pytest

from kfacel.data.tokenize import WordPieceTokenizer


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer()


def test_mention_is_marked_and_long_context_is_cut_from_the_far_ends(tok):
    left = " ".join(["alpha"] * 30) + " near"
    [ids] = tok.encode_mentions([left], ["heart attack"], ["beta " * 30], max_length=16)
    assert len(ids) == 16
    assert ids[0] == tok.cls_id
    assert ids[-1] == tok.sep_id
    s, e = ids.index(tok.start_id), ids.index(tok.end_id)
    assert tok.encode_names(["heart attack"], max_length=8)[0][1:-1] == ids[s + 1 : e]
    assert ids[s - 1] == tok.encode_names(["near"], max_length=8)[0][1]


def test_marker_text_in_the_context_is_not_a_marker(tok):
    [ids] = tok.encode_mentions(["[unused0]"], ["x"], [""], max_length=16)
    assert ids.count(tok.start_id) == 1


def test_names_are_cut_and_too_short_budgets_refused(tok):
    [ids] = tok.encode_names(["a very long concept name indeed"], max_length=4)
    assert len(ids) == 4
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_mentions(["a"], ["b"], ["c"], max_length=4)
