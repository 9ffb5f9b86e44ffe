"""A spaCy pipeline component that links ``doc.ents`` with a kfacel model.

Install the ``spacy`` extra (``pip install "kfacel[spacy]"``); ``import kfacel`` never
imports spaCy. The factory ``"kfacel_linker"`` is registered through the
``spacy_factories`` entry point and on ``import kfacel.spacy``::

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "DISEASE", "pattern": "migraine"}])
    nlp.add_pipe("kfacel_linker", config={"model": "models/v2", "top": 5})
    doc = nlp("Aspirin eased her migraine.")
    doc.ents[0]._.kb_ents  # [("D008881", 7.3), ...], best first

As scispaCy's ``EntityLinker``, each entity gets ``ent._.kb_ents``: a list of
``(concept_id, score)`` pairs, best first (empty when retrieval finds nothing, or the
entity has no letter or digit). ``ent._.kb_concepts`` holds the same candidates as
``kfacel.LinkedConcept``s, with their names and ontologies. The component calls
``kfacel.Linker.link_batch`` with the entities' character spans, so it ranks exactly as
``Linker.link`` and ``kfacel link`` do.
"""

from collections.abc import Iterable, Iterator

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import minibatch

from kfacel.linking.api import Linker, query

FACTORY = "kfacel_linker"

if not Span.has_extension("kb_ents"):  # scispaCy's linker may have set it already
    Span.set_extension("kb_ents", default=[])
if not Span.has_extension("kb_concepts"):
    Span.set_extension("kb_concepts", default=[])


class KfacelLinker:
    """Sets ``ent._.kb_ents`` and ``ent._.kb_concepts`` on every entity of a doc."""

    def __init__(self, linker: Linker, *, name: str = FACTORY) -> None:
        """Wrap a loaded ``kfacel.Linker`` (``top`` candidates kept per entity)."""
        self.linker = linker
        self.name = name

    def __call__(self, doc: Doc) -> Doc:
        """``doc`` with its entities linked."""
        return next(iter(self.pipe([doc])))

    def pipe(self, stream: Iterable[Doc], batch_size: int = 64) -> Iterator[Doc]:
        """Link the entities of ``batch_size`` docs at a time."""
        for docs in minibatch(stream, size=batch_size):
            linkable = [[e for e in doc.ents if _linkable(doc, e)] for doc in docs]
            items = [
                (doc.text, [(e.start_char, e.end_char) for e in ents])
                for doc, ents in zip(docs, linkable, strict=True)
            ]
            results = self.linker.link_batch(items)
            for doc, ents, linked in zip(docs, linkable, results, strict=True):
                for ent in doc.ents:
                    ent._.kb_ents, ent._.kb_concepts = [], []
                for ent, result in zip(ents, linked, strict=True):
                    ent._.kb_concepts = list(result.candidates)
                    ent._.kb_ents = [(c.concept_id, c.score) for c in result.candidates]
                yield doc


def _linkable(doc: Doc, ent: Span) -> bool:
    """Whether the linker takes ``ent`` (a mention with a letter or digit)."""
    try:
        query(doc.text, (ent.start_char, ent.end_char))
    except ValueError:
        return False
    return True


@Language.factory(
    FACTORY,
    default_config={
        "model": "",
        "top": 5,
        "ontology": None,
        "dictionary": None,
        "device": "cpu",
        "batch_size": 64,
    },
)
def make_linker(
    nlp: Language,
    name: str,
    model: str,
    top: int,
    ontology: str | None,
    dictionary: str | None,
    device: str,
    batch_size: int,
) -> KfacelLinker:
    """The ``kfacel_linker`` component over the model directory ``model``.

    Args:
        nlp: the pipeline.
        name: the component's name.
        model: the model directory (``kfacel train``'s ``--out``).
        top: candidates kept per entity.
        ontology: search this ontology of the model alone (default: all).
        dictionary: search this dictionary file alone (one the model learned).
        device: where the ranker runs.
        batch_size: mentions per forward pass.

    Raises:
        ValueError: no ``model`` given, or as ``kfacel.Linker.load``.
    """
    if not model:
        raise ValueError(
            f'{FACTORY}: give the model directory, config={{"model": "models/v2"}}'
        )
    linker = Linker.load(
        model,
        ontology=ontology,
        dictionary=dictionary,
        device=device,
        top=top,
        batch_size=batch_size,
    )
    return KfacelLinker(linker, name=name)
