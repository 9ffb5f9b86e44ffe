#!/bin/bash
# Issue 10's low-rank factors: the transformer protocol's KFC (default budget) with every
# Kronecker factor kept at rank 64 (`curvature.factor_rank = 64`, eq. K10; the penalty
# step's cheaper setting) against whole factors, on the six tier-2 orders. Reads the
# finished cells of runs/paper-transformer-small-r13 (configs/paper-transformer-small.toml):
# its tier-1 models and plain fine-tuning cells are copied, the consolidations are redone
# (the state changes). Resumable; `kfacel report runs/paper-transformer-small-rank64`.
source "$(dirname "$0")/_variant.sh"
variant rank64 "${JOBS:-2}" --copy 'tier2-*-none-*' -- \
    --set 'curvature.factor_rank=64' --set 'methods=["none","kfac-budget"]' \
    --set 'tiers=[1,2]'
