#!/bin/bash
# Issue 10's tier-1 combined cell (the paper's Table 2): one transformer trained on the
# three PUBLIC-3-small tasks together, one epoch, beside the individual models of
# runs/paper-transformer-small-r13 (copied). One cell, one worker; resumable;
# `kfacel report runs/paper-transformer-small-combined`.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SRC=runs/paper-transformer-small-r13
D=runs/paper-transformer-small-combined
SETS=(--set 'methods=["none"]' --set 'tiers=[1]' --set 'combined=true'
      --set 'name="paper-transformer-small-combined"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py $SRC $D configs/paper-transformer-small.toml \
    "${SETS[@]}"
.venv/bin/kfacel experiment configs/paper-transformer-small.toml --out $D "${SETS[@]}" --jobs 1
