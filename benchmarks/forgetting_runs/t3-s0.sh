#!/bin/bash
# Tier 3 seed 0 with the wider CNN: no penalty, KFC at λ = 30 and the default budget. λ = 30
# is the only λ and the new-task tolerance is wide, so the tier-2 "choice" is λ = 30 (and
# ε = 0.005) on every pair; tier3_factors [1.0] trains the third task at (30, 30) and
# (0.005, 0.005). Tier-1, consolidation and tier-2 cells come from runs/forgetting-wide-six
# (via runs/forgetting-t3-partial, which also held the combined models).
# Cells already finished in runs/forgetting-t3-partial (3 seeds' config) are copied.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac","kfac-budget"]' --set 'lam_grid=[30.0]' --set 'budget_grid=[0.005]'
      --set 'pairs=[]' --set 'tiers=[1,2,3]' --set 'seeds=[0]'
      --set 'penalty.tier3_factors=[1.0]' --set 'penalty.new_task_tolerance=100.0'
      --set 'name="forgetting-t3"' --set 'output_dir="runs/forgetting-t3"')
[ -d runs/forgetting-t3 ] || .venv/bin/python benchmarks/fork_run.py runs/forgetting-t3-partial runs/forgetting-t3 configs/forgetting-diagnosis.toml \
  --states --copy 'combined-*-s0' --copy 'tier2-*-s0' --copy 'resume-*-s0' "${SETS[@]}"
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out runs/forgetting-t3 "${SETS[@]}" --jobs 1
