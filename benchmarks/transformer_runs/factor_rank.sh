#!/bin/bash
# Low-rank factors: the transformer protocol's KFC (default budget) with every
# Kronecker factor kept at rank 64 (`curvature.factor_rank = 64`, eq. K10; the penalty
# step's cheaper setting) against whole factors, on the six tier-2 orders. Both arms run
# here with the same code (the main run's KFC cells are older: the trainer's fused AdamW
# came after them), from the tier-1 models and plain fine-tuning cells of
# runs/paper-transformer-small-r13 (configs/paper-transformer-small.toml), copied; the
# consolidations are redone. Resumable; `kfacel report runs/paper-transformer-small-factors-whole`
# (and -factors-rank64).
source "$(dirname "$0")/_variant.sh"
arm() {  # name, extra --set options...
  local name=$1; shift
  variant "factors-$name" "${JOBS:-2}" --copy 'tier2-*-none-*' -- \
      --set 'methods=["none","kfac-budget"]' --set 'tiers=[1,2]' "$@"
}
arm whole
arm rank64 --set 'curvature.factor_rank=64'
