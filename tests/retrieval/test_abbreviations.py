"""Query text: abbreviations defined in their text (Schwartz–Hearst) are retrieved expanded."""

import pytest

from kfacel.retrieval.fusion import FusedGenerator
from kfacel.retrieval.methods import build_generator
from tests.retrieval._dictionaries import SYNONYMS as CONCEPTS


def test_an_abbreviation_defined_in_its_text_is_retrieved_by_its_definition() -> None:
    from kfacel.retrieval.abbreviations import define_abbreviations, retrieval_text

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
    from kfacel.retrieval.abbreviations import define_abbreviations

    assert define_abbreviations(text) == want
