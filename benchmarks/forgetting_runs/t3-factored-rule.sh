#!/bin/bash
# KFC in tier 3 with the paper's appendix-A rule in full: tier3_factors [0.01, 1, 100] around the
# tier-2 dev choice, then the 2-point dev bound (t3-factored.sh offered factor 1 only, which the
# bound admitted on 1 order of 6). Factored damping δ = 1e-6, seeds 0-2; every finished cell of
# runs/forgetting-t3-factored is copied, so only the factors 0.01 and 100 run.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
D=runs/forgetting-t3-factored-rule
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'methods=["none","kfac"]' --set 'lam_grid=[10.0,30.0,100.0]'
      --set 'pairs=[]' --set 'tiers=[1,2,3]' --set 'seeds=[0,1,2]'
      --set 'penalty.tier3_factors=[0.01,1.0,100.0]' --set 'penalty.new_task_tolerance=2.0'
      --set 'curvature.damping=1e-6' --set 'curvature.damping_kind="factored"'
      --set 'name="forgetting-t3-factored-rule"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py runs/forgetting-t3-factored $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*-none-*' --copy 'tier2-*-kfac-[0-9]*' --copy 'combined-*' \
    --copy 'resume-*-none-*' --copy 'resume-*-kfac-[0-9]*' --copy 'tier3-*-none-*' --copy 'tier3-*-kfac-[0-9]*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 2
