"""link: the generator's candidates of a raw mention, ranked by the linker's own scores."""

import pytest
import torch

from kfacel.data.records import Candidate, Concept, LinkingExample
from kfacel.linking.evaluate import predict
from kfacel.linking.link import MentionQuery, link, read_queries, read_query_lines
from kfacel.linking.linker import new_linker
from kfacel.retrieval.methods import build_generator

CONCEPTS = [
    Concept("D1", ("Cirrhosis, Familial", "Copper toxicosis")),
    Concept("D2", ("Thyrotoxicosis",)),
    Concept("D3", ("Silicosis",)),
    Concept("D4", ("Wilson disease", "Hepatolenticular degeneration")),
]
TEXT = "Genetic mapping of the copper toxicosis locus in terriers."


@pytest.fixture(scope="module")
def linker():
    train = [
        LinkingExample("x", "", "", (Candidate("D1", "a"), Candidate("D2", "b")), "D1")
    ]
    torch.manual_seed(0)
    return new_linker("cnn", train, hidden=16, embed_dim=16)


@pytest.mark.parametrize("synonyms", [True, False])
def test_link_ranks_every_candidate_by_the_rankers_score(linker, synonyms) -> None:
    gen = build_generator("tfidf", CONCEPTS)
    query = MentionQuery(TEXT, "copper toxicosis")
    (ranked,) = link(
        linker, gen, [query], num_candidates=3, context_words=3, synonyms=synonyms
    )
    hits = gen.search(["copper toxicosis"], 3)[0]
    assert sorted(r.id for r in ranked) == sorted(c.id for c, _ in hits)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    d1 = next(r for r in ranked if r.id == "D1")
    assert d1.name == "Cirrhosis, Familial"
    assert d1.synonym == ("Copper toxicosis" if synonyms else None)
    # the scores are the ranker's on the query as a task line would hold it
    cands = tuple(
        Candidate(c.id, c.name, c.semantic_type, c.synonym if synonyms else None)
        for c, _ in hits
    )
    example = LinkingExample(
        "copper toxicosis", "mapping of the", "locus in terriers.", cands, cands[0].id
    )
    (logits,) = predict(linker.model, linker.batches([example], 8))
    want = dict(zip([c.id for c in cands], logits[0].tolist(), strict=True))
    assert {r.id: r.score for r in ranked} == pytest.approx(want)
    assert {r.id: r.generator_score for r in ranked} == {c.id: s for c, s in hits}


@pytest.mark.parametrize("as_retrieved", [True, False])
def test_the_ranker_reads_an_abbreviation_as_retrieval_did(
    linker, as_retrieved
) -> None:
    from kfacel.retrieval.fusion import FusedGenerator
    from kfacel.tasks.prepare import context

    text = "Dogs with copper toxicosis (CT) in terriers. CT is inherited."
    gen = FusedGenerator(CONCEPTS, [build_generator("tfidf", CONCEPTS)])
    query = MentionQuery(text, "CT", start=text.rindex("CT"))
    (ranked,) = link(
        linker, gen, [query], num_candidates=2, context_words=3,
        synonyms=False, as_retrieved=as_retrieved,
    )  # fmt: skip
    cands = tuple(Candidate(r.id, r.name) for r in ranked)
    mention = "copper toxicosis" if as_retrieved else "CT"  # what the task line holds
    left, right = context(text, [query.span()], 3)
    assert "(CT)" in left  # the context stays as written
    example = LinkingExample(mention, left, right, cands, cands[0].id)
    (logits,) = predict(linker.model, linker.batches([example], 8))
    want = dict(zip([c.id for c in cands], logits[0].tolist(), strict=True))
    assert {r.id: r.score for r in ranked} == pytest.approx(want)


def test_a_query_without_candidates_gets_an_empty_ranking(linker) -> None:
    """The generator finds nothing for one query: [] for it, the others as alone."""
    gen = build_generator("tfidf", CONCEPTS)
    real = gen.search
    gen.search = lambda texts, k: [[] if t == "terriers" else h  # type: ignore[method-assign]
                                   for t, h in zip(texts, real(texts, k), strict=True)]  # fmt: skip
    first, second = (
        MentionQuery(TEXT, "copper toxicosis"),
        MentionQuery(TEXT, "terriers"),
    )
    kw = {"num_candidates": 3, "context_words": 3}
    both = link(linker, gen, [second, first, second], **kw)
    alone = link(linker, gen, [first], **kw)
    assert both[0] == both[2] == []
    assert both[1] == alone[0]
    assert link(linker, gen, [second], **kw) == [[]]


def test_read_query_lines_keeps_each_bad_line_and_its_reason(tmp_path) -> None:
    """Line numbers count blank lines; read_queries stops at the first bad one."""
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"text": "a fever", "mention": "fever"}\n\n[1]\n'
        '{"text": "a fever", "mention": "cough"}\n'
        '{"text": "x\\udc80", "mention": "x"}\n',
        encoding="utf-8",
    )
    lines = read_query_lines(path)
    assert [(e.line, e.query is None) for e in lines] == [
        (1, False), (3, True), (4, True), (5, True)
    ]  # fmt: skip
    assert lines[0].query == MentionQuery("a fever", "fever")
    assert [e.error for e in lines[1:]] == [
        "expected a JSON object",
        "mention 'cough' is not in the text",
        "'text' is not valid text: lone surrogate U+DC80 at position 1",
    ]
    with pytest.raises(ValueError, match=r"q\.jsonl:3: expected a JSON object$"):
        read_queries(path)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_queries_with_fewer_candidates_are_ranked_as_alone(linker, batch_size) -> None:
    """Candidate lists of 3 and 2 in one call (padded, or batches of two widths)."""
    gen = build_generator("tfidf", CONCEPTS)
    real = gen.search
    same = real(["copper toxicosis"], 3)[0]  # three hits under any generator rule
    gen.search = lambda texts, k: [same[: 2 if t == "terriers" else 3]  # type: ignore[method-assign]
                                   for t in texts]  # fmt: skip
    first, second = (
        MentionQuery(TEXT, "copper toxicosis"),
        MentionQuery(TEXT, "terriers"),
    )
    kw = {"num_candidates": 3, "context_words": 3}
    both = link(linker, gen, [first, second], batch_size=batch_size, **kw)
    assert [len(r) for r in both] == [3, 2]
    for query, got in zip([first, second], both, strict=True):
        (alone,) = link(linker, gen, [query], **kw)
        assert [r.id for r in got] == [r.id for r in alone]
        assert [r.score for r in got] == pytest.approx([r.score for r in alone])
