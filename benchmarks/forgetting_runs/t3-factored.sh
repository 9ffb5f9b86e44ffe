#!/bin/bash
# Tier 3 with the adopted improvements (wider CNN, factored damping δ = 1e-6), seeds 0-2: no
# penalty, KFC with λ chosen on the old task's dev set (the paper's protocol with paper-cnn-small's 2-point new-task dev bound, grid {10, 30, 100},
# tier3_factors [1.0]) and the default budget ε = 0.005 (no old data).
# Tier-1 models, states and tier-2 cells from runs/forgetting-factored-six (none, λ grid) and
# runs/forgetting-budget-factored (the budget); plain fine-tuning's combined, resume and tier-3
# cells (damping does not touch them) from runs/forgetting-t3 and runs/forgetting-t3-partial.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
D=runs/forgetting-t3-factored
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac","kfac-budget"]' --set 'lam_grid=[10.0,30.0,100.0]' --set 'budget_grid=[0.005]'
      --set 'pairs=[]' --set 'tiers=[1,2,3]' --set 'seeds=[0,1,2]' --set 'penalty.tier3_factors=[1.0]' --set 'penalty.new_task_tolerance=2.0'
      --set 'curvature.damping=1e-6' --set 'curvature.damping_kind="factored"'
      --set 'name="forgetting-t3-factored"' --set "output_dir=\"$D\"")
if [ ! -d $D ]; then
  .venv/bin/python benchmarks/fork_run.py runs/forgetting-factored-six $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*' "${SETS[@]}"
  for c in runs/forgetting-budget-factored/cells/tier2-*-kfac-budget-*; do
    [ -f $c/done.json ] && cp -r $c $D/cells/
  done
  for src in runs/forgetting-t3 runs/forgetting-t3-partial; do
    for c in $src/cells/combined-* $src/cells/resume-*-none-* $src/cells/tier3-*-none-*; do
      [ -f $c/done.json ] && [ ! -d $D/cells/$(basename $c) ] && cp -r $c $D/cells/
    done
  done
fi
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 2
