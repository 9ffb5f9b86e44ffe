#!/bin/bash
# Factored damping δ = 1e-6 on seeds 0-2 (seed 0's cells copied from runs/forgetting-factored-1e-6).
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
D=runs/forgetting-factored-1e-6-3s
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac"]' --set 'lam_grid=[10.0,30.0,100.0]'
      --set 'curvature.damping=1e-6' --set 'curvature.damping_kind="factored"'
      --set 'name="forgetting-factored-1e-6-3s"' --set "output_dir=\"$D\"")
if [ ! -d $D ]; then
  .venv/bin/python benchmarks/fork_run.py runs/forgetting-wide $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*-none-*' "${SETS[@]}"
  cp -r runs/forgetting-factored-1e-6/cells/tier2-*-kfac-*-s0 $D/cells/
fi
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 1
