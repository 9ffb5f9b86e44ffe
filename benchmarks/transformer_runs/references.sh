#!/bin/bash
# Issue 10's reference methods at tier 2: LRC (no old data) and replay (the old-data
# reference) on the six orders of the transformer protocol. Reads the finished cells of
# runs/paper-transformer-small-r13 (configs/paper-transformer-small.toml): its tier-1 models
# and its plain fine-tuning cells are copied, so only the 12 LRC and replay cells run.
# Resumable; `kfacel report runs/paper-transformer-small-references` reports them beside
# none's.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SRC=runs/paper-transformer-small-r13
D=runs/paper-transformer-small-references
SETS=(--set 'methods=["none","lrc","replay"]' --set 'tiers=[1,2]'
      --set 'name="paper-transformer-small-references"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py $SRC $D configs/paper-transformer-small.toml \
    --copy 'tier2-*-none-*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/paper-transformer-small.toml --out $D "${SETS[@]}" --jobs 2
