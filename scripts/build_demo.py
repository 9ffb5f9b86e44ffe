"""Build the demo tasks that ship inside the package (``src/kfacel/demo/``).

Three small tasks from corpora whose licenses allow redistribution, each with a
dictionary made only from the corpus itself (a concept's names are the surface forms it
is annotated with in that corpus; no UMLS, MeSH/MEDIC or MedDRA vocabulary is shipped):

- ``mm-demo``: MedMentions ST21pv official dev documents (CC0 1.0), TF-IDF candidates.
- ``psytar-demo``: PsyTAR adverse-drug-reaction reviews (CC BY 4.0), BM25 candidates.
- ``ncbi-demo``: NCBI Disease corpus (US public domain), TF-IDF candidates.

    python scripts/build_demo.py --data ../shared/data --out src/kfacel/demo

Re-running with the same inputs gives byte-identical files.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from kfacel.data.readers.psytar import read_psytar
from kfacel.data.readers.pubtator import read_pubtator
from kfacel.data.records import Concept, Mention
from kfacel.tasks.prepare import TaskSettings, prepare_task
from kfacel.tasks.split import split_by_document

SIZES = {"train": 600, "dev": 150, "test": 1000}


def corpus_dictionary(mentions: Sequence[Mention]) -> list[Concept]:
    """Concepts named by their surface forms in the corpus, most frequent first."""
    forms: dict[str, Counter[str]] = {}
    for m in mentions:
        forms.setdefault(m.concept_ids[0], Counter())[m.surface.strip().lower()] += 1
    return [
        Concept(
            cid, tuple(f for f, _ in sorted(c.items(), key=lambda x: (-x[1], x[0])))
        )
        for cid, c in sorted(forms.items())
    ]


def single(mentions: Sequence[Mention]) -> list[Mention]:
    """Mentions with exactly one concept (composite mentions have no single gold)."""
    return [m for m in mentions if len(m.concept_ids) == 1]


def build(
    name: str,
    mentions: list[Mention],
    method: str,
    out: Path,
    sources: list[str],
    context: int,
) -> None:
    """Split ``mentions`` by document, cap each split and write the task directory."""
    mentions = single(mentions)
    splits = dict(
        zip(
            ("train", "dev", "test"),
            split_by_document(mentions, (0.6, 0.15, 0.25), 7),
            strict=True,
        )
    )
    rng = random.Random(7)
    capped = {}
    for split, items in splits.items():
        items = list(items)
        rng.shuffle(items)
        capped[split] = sorted(items[: SIZES[split]], key=lambda m: (m.doc_id, m.spans))
    prepare_task(
        out / name,
        name=name,
        splits=capped,
        concepts=corpus_dictionary(mentions),
        settings=TaskSettings(
            method=method,
            num_candidates=8,
            context_words=context,
            seed=7,
            # the dictionary is the corpus's own surface forms, dev and test included:
            # a closest synonym would often be the query's annotated mention itself
            synonyms=False,
        ),
        sources=sources,
    )


def main() -> None:
    """Build the three demo tasks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="src/kfacel/demo")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    mm = list(read_pubtator(data / "medmentions" / "st21pv_dev_corpus.txt.gz"))
    build(
        "mm-demo",
        mm,
        "tfidf",
        out,
        ["MedMentions ST21pv (CC0 1.0), official dev documents"],
        10,
    )
    psytar, _ = read_psytar(data / "psytar" / "PsyTAR_dataset.xlsx")
    build(
        "psytar-demo",
        psytar,
        "bm25",
        out,
        ["PsyTAR (CC BY 4.0), Zolnoori et al. 2019"],
        10,
    )
    ncbi = [
        m
        for f in (
            "NCBItrainset_corpus.txt",
            "NCBIdevelopset_corpus.txt",
            "NCBItestset_corpus.txt",
        )
        for m in read_pubtator(data / "ncbi_disease" / f)
    ]
    build(
        "ncbi-demo", ncbi, "tfidf", out, ["NCBI Disease corpus (US public domain)"], 20
    )


if __name__ == "__main__":
    main()
