#!/bin/bash
# Forgetting factor: the K-FAC estimated on the old task's held-out dev queries (curvature.split = dev)
# against the training queries, the wider CNN, the two diagnosis pairs × 3 seeds, λ ∈ {10, 30, 100}.
# Tier-1 models and plain fine-tuning copied from runs/forgetting-wide; states re-estimated.
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac"]' --set 'lam_grid=[10.0,30.0,100.0]' --set 'curvature.split="dev"'
      --set 'name="forgetting-heldout"' --set 'output_dir="runs/forgetting-heldout"')
[ -d runs/forgetting-heldout ] || .venv/bin/python benchmarks/fork_run.py runs/forgetting-wide runs/forgetting-heldout configs/forgetting-diagnosis.toml \
  --copy 'tier2-*-none-*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out runs/forgetting-heldout "${SETS[@]}" --jobs 1
