"""The alias channel: training links, the query's own document left out, ranks shown."""

import pytest

from kfacel.data.aliases import AliasTable
from kfacel.retrieval.candidates import make_candidates
from kfacel.retrieval.methods import build_generator
from tests.retrieval._dictionaries import SYNONYMS as CONCEPTS


def test_alias_channel_leaves_the_querys_own_document_out() -> None:
    table = AliasTable.from_mentions(
        [
            ("d1", "Heart  Attack", "C1"),
            ("d2", "heart attack", "C1"),
            ("d2", "MI", "C1"),
        ]
    )
    gen = build_generator("alias", CONCEPTS, aliases=table)
    _, found, stats = make_candidates(
        gen, ["heart attack", "MI", "MI"], ["C1", "C1", "C1"],
        num_candidates=2, seed=0, docs=["d1", "d2", "d3"],
    )  # fmt: skip
    # d1 still sees d2's link; d2's only "MI" link is its own; d3 sees it
    assert found == [True, False, True]
    assert stats.recall[1] == pytest.approx(2 / 3)


def test_alias_generator_needs_a_table() -> None:
    with pytest.raises(ValueError, match="alias table"):
        build_generator("alias", CONCEPTS)


def test_retrieval_candidates_carry_their_rank_and_the_collator_reads_it() -> None:
    from kfacel.data.collate import RANK_FEATURE_NAMES, Collator
    from kfacel.data.records import LinkingExample
    from kfacel.data.tokenize import WordPieceTokenizer

    table = AliasTable((("d", "mi", "C1"),))
    alias = build_generator("alias", CONCEPTS, aliases=table)
    lists, found, _ = make_candidates(
        alias, ["MI", "MI"], ["C1", "C2"], num_candidates=3, seed=0
    )
    by_id = [{c.id: c.rank for c in cands} for cands in lists]
    assert found == [True, False]
    assert by_id[0]["C1"] == 1  # retrieved first
    assert by_id[1]["C2"] is None  # inserted, no evidence: no rank
    tfidf = build_generator("tfidf", CONCEPTS)  # the paper's: ranks are not shown
    plain, _, _ = make_candidates(tfidf, ["fever"], ["C3"], num_candidates=3, seed=0)
    assert all(c.rank is None for c in plain[0])

    example = LinkingExample("MI", "", "", lists[0], "C1")
    collator = Collator(WordPieceTokenizer(), ranks=True)
    assert collator.feature_names[-1] == RANK_FEATURE_NAMES[0]
    batch = collator([example])
    want = [1.0 / c.rank if c.rank else 0.0 for c in lists[0]]
    assert batch.features[0, :, -1].tolist() == pytest.approx(want)
    line = example.to_json()
    line["candidates"][0]["rank"] = "2"
    with pytest.raises(ValueError, match="'rank' must be an integer"):
        LinkingExample.from_json(line)
