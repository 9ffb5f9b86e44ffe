#!/bin/bash
# Factored damping δ = 1e-6 (eq. P4) on all six permutations × 3 seeds, λ ∈ {10, 30, 100}, wider CNN.
# Tier-1 models, K-FAC states and plain fine-tuning from runs/forgetting-wide-six; the diagnosis
# pairs' factored cells from runs/forgetting-factored-1e-6-3s.
set -e
cd "$(dirname "$0")/../.."
D=runs/forgetting-factored-six
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'pairs=["medmentions>cadec","medmentions>ncbi","cadec>medmentions","cadec>ncbi","ncbi>medmentions","ncbi>cadec"]'
      --set 'methods=["none","kfac"]' --set 'lam_grid=[10.0,30.0,100.0]'
      --set 'curvature.damping=1e-6' --set 'curvature.damping_kind="factored"'
      --set 'name="forgetting-factored-six"' --set "output_dir=\"$D\"")
if [ ! -d $D ]; then
  .venv/bin/python benchmarks/fork_run.py runs/forgetting-wide-six $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*-none-*' "${SETS[@]}"
  cp -r runs/forgetting-factored-1e-6-3s/cells/tier2-*-kfac-* $D/cells/
fi
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 2
