#!/bin/bash
# The LayerNorm comparison: the transformer protocol's KFC (default budget) with the
# layer norms given a diagonal Fisher (`uncovered = "diagonal"`) against the paper's
# `ignore`, on two permutations. Reads the finished cells of runs/paper-transformer-small-r13
# (configs/paper-transformer-small.toml): its tier-1 models and its plain fine-tuning
# cells are copied, the consolidations are redone (the curvature changes). Resumable.
source "$(dirname "$0")/_variant.sh"
variant layernorm 2 --copy 'tier2-medmentions-cadec-none-*' --copy 'tier2-cadec-ncbi-none-*' -- \
    --set 'curvature.uncovered="diagonal"' --set 'methods=["none","kfac-budget"]' \
    --set 'pairs=["medmentions>cadec","cadec>ncbi"]' --set 'tiers=[1,2]'
