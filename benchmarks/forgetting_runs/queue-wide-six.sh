#!/bin/bash
# The other four permutations with the wider CNN (λ grid 10, 30, 100; the two diagnosis
# pairs' cells on that grid copied from runs/forgetting-wide, which must exist).
cd "$(dirname "$0")/../.."
SETS=(--set 'model.embed_dim=128' --set 'model.hidden=256'
      --set 'pairs=["medmentions>cadec","medmentions>ncbi","cadec>medmentions","cadec>ncbi","ncbi>medmentions","ncbi>cadec"]'
      --set 'methods=["none","kfac","ewc","kfac-budget"]' --set 'lam_grid=[10.0,30.0,100.0]' --set 'budget_grid=[0.005]'
      --set 'name="forgetting-wide-six"' --set 'output_dir="runs/forgetting-wide-six"')
COPY=()
for p in medmentions-cadec ncbi-medmentions; do
  COPY+=(--copy "tier2-$p-none-*" --copy "tier2-$p-*-10-*" --copy "tier2-$p-*-30-*" --copy "tier2-$p-*-100-*" --copy "tier2-$p-kfac-budget-*")
done
.venv/bin/python benchmarks/fork_run.py runs/forgetting-wide runs/forgetting-wide-six configs/forgetting-diagnosis.toml --states "${COPY[@]}" "${SETS[@]}"
.venv/bin/kfacel experiment configs/forgetting-diagnosis.toml --out runs/forgetting-wide-six "${SETS[@]}" --jobs 2
