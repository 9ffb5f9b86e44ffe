"""Stage wall times of a run directory made before ``env.json`` recorded them.

Each cell's end is its ``done.json`` modification time and its start that minus its
``seconds``; a stage's span is its first start to its last end, per kind of cell.

Usage::

    python benchmarks/stage_times.py runs/paper-cnn-small
"""

import collections
import datetime
import glob
import json
import os
import sys

run = sys.argv[1]
span = collections.defaultdict(lambda: [float("inf"), 0.0, 0, 0.0])
for f in glob.glob(f"{run}/cells/*/done.json"):
    d = json.loads(open(f).read())  # noqa: SIM115
    end = os.path.getmtime(f)
    s = span[d["kind"]]
    s[0] = min(s[0], end - d["seconds"])
    s[1] = max(s[1], end)
    s[2] += 1
    s[3] += d["seconds"]
order = ["individual", "combined", "consolidate", "tier2", "resume", "tier3"]
for k in order:
    if k in span:
        a, b, n, tot = span[k]
        print(
            f"{k:12s} cells {n:3d}  first start {datetime.datetime.fromtimestamp(a, datetime.UTC):%H:%M:%S}  last end {datetime.datetime.fromtimestamp(b, datetime.UTC):%H:%M:%S}  wall {b - a:7.0f} s  cell-seconds {tot:7.0f}"
        )
