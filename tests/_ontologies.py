"""A tiny model trained on two tasks with two ontologies (A's MEDIC-like, B's MedDRA-like).

``two_ontology_model(root)`` prepares task ``ncbi`` over ``medic.tsv`` and task ``cadec``
over ``meddra.tsv`` (one id, ``D001``, in both: the union must keep them apart), trains
``v1`` on the first and ``v2 = train --init v1`` on the second, through the CLI.
"""

from dataclasses import dataclass
from pathlib import Path

from kfacel.cli import main
from tests._synth import write_pubtator_corpus

MEDIC = {
    "D001": ("heart attack", "Disease"),
    "D002": ("lung cancer", "Disease"),
    "D003": ("kidney failure", "Disease"),
    "D004": ("liver disease", "Disease"),
}
MEDDRA = {
    "10019211": ("headache", "PT"),
    "10028813": ("nausea", "PT"),
    "10022437": ("insomnia", "PT"),
    "D001": ("dizziness", "PT"),  # an id A's ontology uses for another concept
}


@dataclass(frozen=True)
class TwoOntologies:
    """Paths of the dictionaries, tasks and models."""

    medic: Path
    meddra: Path
    task_a: Path
    task_b: Path
    v1: Path
    v2: Path


def _task(root: Path, name: str, concepts: dict, seed: int) -> tuple[Path, Path]:
    corpus = root / f"{name}.txt"
    dictionary = root / ("medic.tsv" if concepts is MEDIC else "meddra.tsv")
    surfaces = {cid: (typ, [n]) for cid, (n, typ) in concepts.items()}
    write_pubtator_corpus(corpus, surfaces, n_docs=40, seed=seed)
    lines = (f"{cid}\t{typ}\t{n}\n" for cid, (n, typ) in concepts.items())
    dictionary.write_text("".join(lines), encoding="utf-8")
    out = root / name
    assert main(
        ["-q", "prepare", "pubtator", "--corpus", str(corpus), "--dictionary",
         str(dictionary), "--out", str(out), "--candidates", "tfidf",
         "--num-candidates", "4", "--context-words", "3"]
    ) == 0  # fmt: skip
    return out, dictionary


def two_ontology_model(root: Path) -> TwoOntologies:
    """Prepare both tasks and train v1 (A) and v2 (A then B) under ``root``."""
    task_a, medic = _task(root, "ncbi", MEDIC, 0)
    task_b, meddra = _task(root, "cadec", MEDDRA, 1)
    common = ["--model", "cnn", "--epochs", "8", "--lr", "1e-2", "--hidden", "16", "--batch-size",
              "16", "--max-length", "24", "--threads", "1"]  # fmt: skip
    v1, v2 = root / "v1", root / "v2"
    assert main(["-q", "train", "--task", str(task_a), "--out", str(v1), *common]) == 0
    assert main(
        ["-q", "train", "--task", str(task_b), "--init", str(v1), "--out", str(v2),
         *common]
    ) == 0  # fmt: skip
    return TwoOntologies(medic, meddra, task_a, task_b, v1, v2)
