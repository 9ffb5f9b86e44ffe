#!/bin/bash
# Issue 10's LayerNorm comparison: the transformer protocol's KFC (default budget) with the
# layer norms given a diagonal Fisher (`uncovered = "diagonal"`) against the paper's
# `ignore`, on two permutations. Reads the finished cells of runs/paper-transformer-small
# (configs/paper-transformer-small.toml): its tier-1 models and its plain fine-tuning
# cells are copied, the consolidations are redone (the curvature changes). Resumable.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SRC=runs/paper-transformer-small-r13
D=runs/paper-transformer-small-layernorm
SETS=(--set 'curvature.uncovered="diagonal"' --set 'methods=["none","kfac-budget"]'
      --set 'pairs=["medmentions>cadec","cadec>ncbi"]' --set 'tiers=[1,2]'
      --set 'name="paper-transformer-small-layernorm"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py $SRC $D configs/paper-transformer-small.toml \
    --copy 'tier2-medmentions-cadec-none-*' --copy 'tier2-cadec-ncbi-none-*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/paper-transformer-small.toml --out $D "${SETS[@]}" --jobs 2
