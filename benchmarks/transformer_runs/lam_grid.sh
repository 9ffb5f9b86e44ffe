#!/bin/bash
# Issue 10's λ grid beside the budget: KFC and diagonal EWC at fixed λ ∈ {10, 100, 1000}
# on the six tier-2 orders of the transformer protocol, λ chosen per order by the paper's
# rule (best old-task dev accuracy within the config's new-task tolerance). Reads the
# finished cells of runs/paper-transformer-small-r13 (configs/paper-transformer-small.toml):
# its tier-1 models, consolidations and plain fine-tuning cells are copied, so only the
# 36 grid cells run. Resumable; `kfacel report runs/paper-transformer-small-lam`.
set -e
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SRC=runs/paper-transformer-small-r13
D=runs/paper-transformer-small-lam
SETS=(--set 'methods=["none","kfac","ewc"]' --set 'lam_grid=[10.0,100.0,1000.0]'
      --set 'tiers=[1,2]' --set 'name="paper-transformer-small-lam"' --set "output_dir=\"$D\"")
[ -d $D ] || .venv/bin/python benchmarks/fork_run.py $SRC $D configs/paper-transformer-small.toml \
    --states --copy 'tier2-*-none-*' "${SETS[@]}"
.venv/bin/kfacel experiment configs/paper-transformer-small.toml --out $D "${SETS[@]}" --jobs "${JOBS:-2}"
