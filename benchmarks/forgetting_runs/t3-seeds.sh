#!/bin/bash
# Tier 3 on seeds 0-2 (the design of t3-s0.sh): a new run directory from runs/forgetting-wide-six
# (tier-1 models, states, tier-2 cells at λ = 30 and ε = 0.005, plain fine-tuning), with the
# combined models and the finished resume and tier-3 cells of runs/forgetting-t3 (seed 0) and
# runs/forgetting-t3-partial (seeds 1-2, where they exist) copied in. Resumable.
set -e
cd "$(dirname "$0")/../.."
D=runs/forgetting-t3-seeds
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac","kfac-budget"]' --set 'lam_grid=[30.0]' --set 'budget_grid=[0.005]'
      --set 'pairs=[]' --set 'tiers=[1,2,3]' --set 'seeds=[0,1,2]'
      --set 'penalty.tier3_factors=[1.0]' --set 'penalty.new_task_tolerance=100.0'
      --set 'name="forgetting-t3-seeds"' --set "output_dir=\"$D\"")
if [ ! -d $D ]; then
  .venv/bin/python benchmarks/fork_run.py runs/forgetting-wide-six $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*-none-*' --copy 'tier2-*-kfac-30-*' --copy 'tier2-*-kfac-budget-*' "${SETS[@]}"
  for src in runs/forgetting-t3-partial runs/forgetting-t3; do
    for c in $src/cells/combined-* $src/cells/resume-* $src/cells/tier3-*; do
      [ -f $c/done.json ] && [ ! -d $D/cells/$(basename $c) ] && cp -r $c $D/cells/
    done
  done
fi
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 2
