#!/bin/bash
# The reference methods at tier 2: LRC (no old data) and replay (the old-data
# reference) on the six orders of the transformer protocol. Reads the finished cells of
# runs/paper-transformer-small-r13 (configs/paper-transformer-small.toml): its tier-1 models
# and its plain fine-tuning cells are copied, so only the 12 LRC and replay cells run.
# Resumable; `kfacel report runs/paper-transformer-small-references` reports them beside
# none's.
source "$(dirname "$0")/_variant.sh"
variant references 2 --copy 'tier2-*-none-*' -- \
    --set 'methods=["none","lrc","replay"]' --set 'tiers=[1,2]'
