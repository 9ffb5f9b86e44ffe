"""PUBLIC-3, the public three-task benchmark, built from ``shared/data``.

| task | split | candidates | context |
|---|---|---|---|
| ``medmentions`` | official dev docs → train; official test docs → dev (even position
  in the numerically sorted PMIDs) / test (odd) | C = 10, TF-IDF over the 25,419 names
  of ``st21pv_entities.txt`` | 10 |
| ``cadec`` | by post, seed 13: 70/10/20 | C = 10, BM25 over the PT names | 10 |
| ``ncbi`` | official train/dev/test | C = 25, TF-IDF over MEDIC names + synonyms | 20 |

Composite mentions (several ids, NCBI's ``|`` and ``+``) are skipped and counted (see
:mod:`kfacel.tasks.prepare`); NCBI golds that are MEDIC alternative ids are linked to their
concept's primary id. Every task uses seed 13 for sampling and shuffling.

``small=True`` is the CPU variant: 10% of MedMentions' training queries (the paper's
Table 1 used 10% samples), and at most 2,000 dev and test queries in every task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfacel.data.readers import (
    cadec_concepts,
    read_cadec,
    read_dictionary,
    read_pubtator,
)
from kfacel.data.records import Mention, SkipReport
from kfacel.retrieval.finetune import RetrieverSettings
from kfacel.tasks.directory import check_task_out
from kfacel.tasks.prepare import TaskSettings, prepare_task
from kfacel.tasks.split import split_by_document

logger = logging.getLogger(__name__)

SEED = 13
TASKS = ("medmentions", "cadec", "ncbi")
SMALL_TRAIN_SHARE = 0.1
SMALL_EVAL_CAP = 2000


def _pmid_key(pmid: str) -> tuple[int, str]:
    return (int(pmid), pmid) if pmid.isdigit() else (1 << 62, pmid)


def _file(data: Path, *parts: str) -> Path:
    path = data.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing benchmark input (is --data right?)")
    return path


def _medmentions(data: Path, out: Path, small: bool, how: _How) -> dict[str, Any]:
    names = _file(data, "medmentions", "st21pv_entities.txt")
    train_f = _file(data, "medmentions", "st21pv_dev_corpus.txt.gz")
    held_f = _file(data, "medmentions", "st21pv_test_corpus.txt.gz")
    skips = SkipReport()
    concepts = read_dictionary(names, skips=skips)
    train = list(read_pubtator(train_f, skips=skips))
    held = list(read_pubtator(held_f, skips=skips))
    pmids = sorted({m.doc_id for m in held}, key=_pmid_key)
    even = set(pmids[0::2])
    return prepare_task(
        out / "medmentions",
        name="medmentions",
        splits={
            "train": train,
            "dev": [m for m in held if m.doc_id in even],
            "test": [m for m in held if m.doc_id not in even],
        },
        concepts=concepts,
        settings=how.settings(
            "tfidf", 10, 10, _limits(small, train_share=SMALL_TRAIN_SHARE)
        ),
        sources=[str(p) for p in (train_f, held_f, names)],
        skips=skips,
        progress=how.progress,
    )


def _cadec(data: Path, out: Path, small: bool, how: _How) -> dict[str, Any]:
    path = _file(data, "cadec", "CADEC.json")
    skips = SkipReport()
    mentions: list[Mention] = list(read_cadec(path, skips=skips))
    train, dev, test = split_cadec(mentions)
    return prepare_task(
        out / "cadec",
        name="cadec",
        splits={"train": train, "dev": dev, "test": test},
        concepts=cadec_concepts(mentions),
        settings=how.settings("bm25", 10, 10, _limits(small)),
        sources=[str(path)],
        skips=skips,
        progress=how.progress,
    )


def split_cadec(mentions: Sequence[Mention]) -> list[list[Mention]]:
    """CADEC's train / dev / test: 70 / 10 / 20% of its posts, seeded (no official split)."""
    return split_by_document(mentions, (0.7, 0.1, 0.2), seed=SEED)


def _ncbi(data: Path, out: Path, small: bool, how: _How) -> dict[str, Any]:
    files = {
        "train": _file(data, "ncbi_disease", "NCBItrainset_corpus.txt"),
        "dev": _file(data, "ncbi_disease", "NCBIdevelopset_corpus.txt"),
        "test": _file(data, "ncbi_disease", "NCBItestset_corpus.txt"),
    }
    medic = _file(data, "ncbi_disease", "medic_06Jul2012.txt")
    skips = SkipReport()
    concepts = read_dictionary(medic, skips=skips)
    splits = {s: list(read_pubtator(f, skips=skips)) for s, f in files.items()}
    return prepare_task(
        out / "ncbi",
        name="ncbi",
        splits=splits,
        concepts=concepts,
        settings=how.settings("tfidf", 25, 20, _limits(small)),
        sources=[*(str(f) for f in files.values()), str(medic)],
        skips=skips,
        progress=how.progress,
    )


def _limits(small: bool, train_share: float | None = None) -> dict[str, int | float]:
    if not small:
        return {}
    out: dict[str, int | float] = {"dev": SMALL_EVAL_CAP, "test": SMALL_EVAL_CAP}
    if train_share is not None:
        out["train"] = train_share
    return out


@dataclass(frozen=True)
class _How:
    """Choices shared by the three builders (see ``build_public3``)."""

    synonyms: bool = True
    method: str | None = None
    num_candidates: int | None = None
    progress: bool = False
    retriever: RetrieverSettings | None = None

    def settings(
        self,
        method: str,
        num_candidates: int,
        context_words: int,
        max_queries: dict[str, int | float],
    ) -> TaskSettings:
        """A task's settings: its own method and C unless overridden, seed 13."""
        return TaskSettings(
            method=self.method or method,
            num_candidates=self.num_candidates or num_candidates,
            context_words=context_words,
            seed=SEED,
            max_queries=max_queries,
            synonyms=self.synonyms,
            retriever=self.retriever,
        )


_BUILDERS: dict[str, Callable[[Path, Path, bool, _How], dict[str, Any]]] = {
    "medmentions": _medmentions,
    "cadec": _cadec,
    "ncbi": _ncbi,
}


def build_public3(
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    small: bool = False,
    tasks: tuple[str, ...] = TASKS,
    synonyms: bool = True,
    overwrite: bool = True,
    method: str | None = None,
    num_candidates: int | None = None,
    progress: bool = False,
    retriever: RetrieverSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Build the PUBLIC-3 task directories ``out_dir/{medmentions,cadec,ncbi}``.

    Args:
        data_dir: the ``shared/data`` directory (``medmentions/``, ``cadec/``,
            ``ncbi_disease/``).
        out_dir: where the task directories go.
        small: the CPU variant (10% of MedMentions' training queries, at most 2,000
            dev/test queries per task).
        tasks: which of the three to build.
        synonyms: candidates carry their name closest to the mention
            (``prepare_task``); False: preferred names only.
        overwrite: replace existing task directories (other directories are never
            replaced; see :func:`~kfacel.tasks.directory.check_task_out`).
        method: candidate method of every task (None: the paper's, per task);
            ``"fused"`` builds the tasks a linker in use is trained on.
        num_candidates: C of every task (None: the paper's, per task).
        progress: progress bars while dense retrieval embeds a dictionary.
        retriever: fine-tune the dense retriever on each dictionary's synonyms
            (``prepare_task``); None: MiniLM as shipped.

    Returns:
        ``{task name: its task.json contents}``.

    Raises:
        FileNotFoundError: naming a missing input file.
        ValueError: for an unknown task name, or an output directory that would lose
            data (checked for every task before any is built).
    """
    unknown = [t for t in tasks if t not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown PUBLIC-3 tasks {unknown}; choose from {TASKS}")
    data, out = Path(data_dir), Path(out_dir)
    for task in tasks:
        check_task_out(out / task, inputs=[data], overwrite=overwrite)
    results = {}
    for task in tasks:
        logger.info("building %s", task)
        how = _How(synonyms, method, num_candidates, progress, retriever)
        results[task] = _BUILDERS[task](data, out, small, how)
    return results
