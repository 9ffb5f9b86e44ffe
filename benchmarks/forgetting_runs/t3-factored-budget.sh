#!/bin/bash
# The default budget's tier 3 on every order: t3-factored.sh's cells, with the new-task tolerance
# widened (100 points) so that the budget, which has no λ to choose, continues on every pair (the
# 2-point rule of t3-factored.sh dropped ncbi → cadec, whose budget cost 2+ points of cadec's dev).
# Methods none and kfac-budget only; the 6 missing cells are run, the rest copied.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
D=runs/forgetting-t3-factored-budget
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac-budget"]' --set 'budget_grid=[0.005]'
      --set 'pairs=[]' --set 'tiers=[1,2,3]' --set 'seeds=[0,1,2]' --set 'penalty.tier3_factors=[1.0]' --set 'penalty.new_task_tolerance=100.0'
      --set 'curvature.damping=1e-6' --set 'curvature.damping_kind="factored"'
      --set 'name="forgetting-t3-factored-budget"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py runs/forgetting-t3-factored $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*-none-*' --copy 'tier2-*-kfac-budget-*' --copy 'combined-*' \
    --copy 'resume-*-none-*' --copy 'resume-*-kfac-budget-*' --copy 'tier3-*-none-*' --copy 'tier3-*-kfac-budget-*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 2
