#!/bin/bash
# The λ grid beside the budget: diagonal EWC at fixed λ ∈ {100, 1000} and KFC at
# λ ∈ {10, 100} on the six tier-2 orders of the transformer protocol, λ chosen per order
# by the paper's rule (best old-task dev accuracy within the config's new-task
# tolerance). Each method's grid sits where its penalty is comparable to the task loss:
# at plain fine-tuning's end point the diagonal Fisher predicts a rise of 0.0005-0.0012
# nats (RESULTS.md), so EWC needs λ in the hundreds to act; KFC's budget settled at
# λ ≈ 7-8. Reads the finished cells of runs/paper-transformer-small-r13
# (configs/paper-transformer-small.toml): its tier-1 models, consolidations and plain
# fine-tuning cells are copied, so only the 24 grid cells run. Resumable;
# `kfacel report runs/paper-transformer-small-lam-ewc` (and -lam-kfac).
source "$(dirname "$0")/_variant.sh"
grid() {  # method, λ list
  variant "lam-$1" "${JOBS:-2}" --states --copy 'tier2-*-none-*' -- \
      --set "methods=[\"none\",\"$1\"]" --set "lam_grid=$2" --set 'tiers=[1,2]'
}
grid ewc "[100.0,1000.0]"
grid kfac "[10.0,100.0]"
