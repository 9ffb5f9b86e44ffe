#!/bin/bash
# The default rule (budget ε = 0.005) with factored damping δ = 1e-6, six permutations × 3 seeds.
# Tier-1 models, states and plain fine-tuning from runs/forgetting-wide-six.
set -e
cd "$(dirname "$0")/../.."
D=runs/forgetting-budget-factored
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'pairs=["medmentions>cadec","medmentions>ncbi","cadec>medmentions","cadec>ncbi","ncbi>medmentions","ncbi>cadec"]'
      --set 'methods=["none","kfac-budget"]' --set 'budget_grid=[0.005]'
      --set 'curvature.damping=1e-6' --set 'curvature.damping_kind="factored"'
      --set 'name="forgetting-budget-factored"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py runs/forgetting-wide-six $D configs/forgetting-diagnosis.toml \
    --states --copy 'tier2-*-none-*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out $D "${SETS[@]}" --jobs 2
