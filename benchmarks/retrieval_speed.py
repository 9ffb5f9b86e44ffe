"""Time and memory of retrieval over a whole dictionary, and `link`'s throughput.

One dictionary per run (peak memory is the process's own):

1. the dense name index built cold (a fresh cache directory): wall time, names/s;
2. the same index read back from the cache: wall time;
3. fused retrieval (alias table, TF-IDF, dense) of the mentions of a task split, top C;
4. with ``--model``, the linker end to end (`kfacel.linking.link.link`, what `kfacel
   link` runs after loading): mentions/s and accuracy over the same mentions, each in its
   whole document with ``--documents`` (the split's PubTator corpus; as `prepare` read
   it, so abbreviations defined anywhere in it are found), else in its context window.

It prints what it measured; nothing is asserted.

    python benchmarks/retrieval_speed.py \
        --dictionary ../shared/data/ncbi_disease/medic_06Jul2012.txt \
        --task tasks/public3-small-fused/ncbi --model models/f_ncbi_cnn
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from kfacel.data.readers import read_dictionary
from kfacel.data.records import LinkingExample
from kfacel.linking.link import MentionQuery
from kfacel.retrieval.dense import NameIndex, SentenceEncoder
from kfacel.retrieval.fusion import FusedGenerator
from kfacel.retrieval.methods import build_generator
from kfacel.tasks.directory import load_task
from kfacel.tasks.prepare import context


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dictionary", required=True)
    p.add_argument("--task", required=True, help="a task built with --candidates fused")
    p.add_argument("--split", default="test")
    p.add_argument("--model", help="a model directory trained on --task")
    p.add_argument(
        "--documents",
        help="the split's PubTator corpus: link reads each mention in its whole "
        "document (as prepare did), not in its context window",
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    concepts = read_dictionary(args.dictionary)
    task = load_task(args.task)
    queries = task.split(args.split)
    c = int(task.info["candidates"]["num_candidates"])
    out: dict[str, object] = {"dictionary": args.dictionary, "concepts": len(concepts)}

    encoder = SentenceEncoder()
    with tempfile.TemporaryDirectory() as cache:
        gen = build_generator("tfidf", concepts)
        names = gen._originals
        t = time.perf_counter()
        NameIndex.build(encoder, names, cache=Path(cache))
        cold = time.perf_counter() - t
        t = time.perf_counter()
        index = NameIndex.build(encoder, names, cache=Path(cache))
        warm = time.perf_counter() - t
    out |= {
        "names": len(names),
        "index_cold_s": round(cold, 1),
        "names_per_s": round(len(names) / cold, 1),
        "index_cached_s": round(warm, 2),
        "index_mb": round(index.matrix.nbytes / 2**20, 1),
    }

    t = time.perf_counter()
    fused = build_generator("fused", concepts, aliases=task.aliases)
    out["fused_build_s"] = round(time.perf_counter() - t, 1)
    assert isinstance(fused, FusedGenerator)
    mentions = [q.mention for q in queries]
    t = time.perf_counter()
    fused.search(mentions, c)
    dt = time.perf_counter() - t
    out |= {
        "mentions": len(mentions),
        "retrieval_mentions_per_s": round(len(mentions) / dt, 1),
    }

    if args.model:
        from kfacel.linking.link import link
        from kfacel.linking.linker import load_linker

        linker = load_linker(args.model)
        info = linker.meta["task"]
        k = int(info["context_words"])
        texts = _documents(args.documents) if args.documents else {}
        batch = [_query(q, texts.get(q.doc_id), k) for q in queries]
        t = time.perf_counter()
        ranked = link(
            linker, fused, batch, num_candidates=c,
            context_words=k,
            synonyms=bool(info["candidates"].get("synonyms", False)),
        )  # fmt: skip
        dt = time.perf_counter() - t
        right = sum(r[0].id == q.gold for r, q in zip(ranked, queries, strict=True))
        out |= {
            "link_mentions_per_s": round(len(batch) / dt, 1),
            "link_accuracy": round(right / len(queries), 4),
        }
    out["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    out["threads"] = args.threads
    print(json.dumps(out, indent=1))


def _documents(path: str) -> dict[str, str]:
    from kfacel.data.readers import read_pubtator

    return {m.doc_id: m.text for m in read_pubtator(path)}


def _query(q: LinkingExample, text: str | None, k: int) -> MentionQuery:
    """The query as `link` reads it: in its document when given, else its window."""
    if text is not None:
        start = text.find(q.mention)
        while start >= 0:
            span = (start, start + len(q.mention))
            if context(text, [span], k) == (q.left_context, q.right_context):
                return MentionQuery(text, q.mention, start)
            start = text.find(q.mention, start + 1)
    left = q.left_context + " " if q.left_context else ""
    right = " " + q.right_context if q.right_context else ""
    return MentionQuery(left + q.mention + right, q.mention, len(left))


if __name__ == "__main__":
    main()
