#!/bin/bash
# Forgetting factor: factored Tikhonov damping (eq. P4) of the K-FAC penalty, δ ∈ {1e-6, 1e-5}
# (the mid layers' blocks have mean eigenvalues 1e-5 to 7e-5), λ ∈ {10, 30, 100}, the wider
# CNN, the two diagnosis pairs, seed 0. Tier-1 models, K-FAC states (damping is applied at
# penalty time) and plain fine-tuning copied from runs/forgetting-wide.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
for d in 1e-6 1e-5; do
  SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256' --set 'seeds=[0]'
        --set 'methods=["none","kfac"]' --set 'lam_grid=[10.0,30.0,100.0]'
        --set "curvature.damping=$d" --set 'curvature.damping_kind="factored"'
        --set "name=\"forgetting-factored-$d\"" --set "output_dir=\"runs/forgetting-factored-$d\"")
  [ -d runs/forgetting-factored-$d ] || .venv/bin/python benchmarks/fork_run.py runs/forgetting-wide runs/forgetting-factored-$d \
    configs/forgetting-diagnosis.toml --states --copy 'tier2-*-none-s0' "${SETS[@]}"
  .venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out runs/forgetting-factored-$d "${SETS[@]}" --jobs 1
done
