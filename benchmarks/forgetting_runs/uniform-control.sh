#!/bin/bash
# Control for factored damping: uniform δ I with the same δ = 1e-6, diagnosis pairs × 3 seeds.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
D=runs/forgetting-uniform-1e-6
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac"]' --set 'lam_grid=[10.0,30.0,100.0]'
      --set 'curvature.damping=1e-6' --set 'curvature.damping_kind="uniform"'
      --set 'name="forgetting-uniform-1e-6"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py runs/forgetting-wide $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*-none-*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 1
