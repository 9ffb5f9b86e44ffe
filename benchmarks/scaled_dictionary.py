"""MEDIC cut down or blown up to a given number of names, to time ``kfacel prepare``.

::

    python benchmarks/scaled_dictionary.py MEDIC CORPUS --names 30000 --out d30k.txt
    python benchmarks/scaled_dictionary.py MEDIC CORPUS --names 300000 --out d300k.txt

Fewer names than MEDIC holds: the concepts the PubTator ``CORPUS`` links to first, then
MEDIC's other concepts in file order, whole, until ``--names`` is reached. More: every
MEDIC concept, then systematic variants, each a new concept (id ``V<k>-<id>``) whose
names are the original's rewritten one way: ``k`` = 1 words reversed, 2 ``", unspecified"``
appended, 3 ``"familial "`` prepended, 4 ``" syndrome"`` appended, … (cycling with a
number once the rewrites run out), until ``--names`` is reached. Written in MEDIC's
format (``IDS||NAMES``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

REWRITES: tuple[Callable[[str], str], ...] = (
    lambda n: " ".join(reversed(n.split())),
    lambda n: f"{n}, unspecified",
    lambda n: f"familial {n}",
    lambda n: f"{n} syndrome",
    lambda n: f"acquired {n}",
    lambda n: f"{n} of childhood",
)


def _medic(path: Path) -> list[tuple[str, list[str]]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        ids, sep, names = line.partition("||")
        if sep and names:
            rows.append((ids.split("|")[0].strip(), names.split("|")))
    return rows


def _gold(corpus: Path) -> set[str]:
    out: set[str] = set()
    for line in corpus.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 6:
            for cid in parts[5].replace("+", "|").split("|"):
                out.add(cid.strip().removeprefix("MESH:").removeprefix("OMIM:"))
    return out


def scaled(
    rows: list[tuple[str, list[str]]], gold: set[str], names: int
) -> list[tuple[str, list[str]]]:
    """Concepts with about ``names`` names in all (whole concepts, so a few more)."""
    total = sum(len(n) for _, n in rows)
    if names <= total:
        first = [r for r in rows if r[0] in gold] + [
            r for r in rows if r[0] not in gold
        ]
        out, count = [], 0
        for row in first:
            if count >= names:
                break
            out.append(row)
            count += len(row[1])
        return out
    out, count, k = list(rows), total, 0
    while count < names:
        rewrite = REWRITES[k % len(REWRITES)]
        suffix = f" {k // len(REWRITES) + 1}" if k >= len(REWRITES) else ""
        k += 1
        for cid, ns in rows:
            if count >= names:
                break
            out.append((f"V{k}-{cid}", [rewrite(n) + suffix for n in ns]))
            count += len(ns)
    return out


def main() -> None:
    """Write the scaled dictionary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("medic", type=Path)
    p.add_argument("corpus", type=Path, help="a PubTator corpus whose gold to keep")
    p.add_argument("--names", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    rows = scaled(_medic(args.medic), _gold(args.corpus), args.names)
    text = "".join(f"{cid}||{'|'.join(ns)}\n" for cid, ns in rows)
    args.out.write_text(text, encoding="utf-8")
    n = sum(len(ns) for _, ns in rows)
    print(f"{args.out}: {len(rows)} concepts, {n} names")


if __name__ == "__main__":
    main()
