#!/bin/bash
# The transformer protocol's tier-1 combined cell (the paper's Table 2): one transformer trained on the
# three PUBLIC-3-small tasks together, one epoch, beside the individual models of
# runs/paper-transformer-small-r13 (copied). One cell, one worker; resumable;
# `kfacel report runs/paper-transformer-small-combined`.
source "$(dirname "$0")/_variant.sh"
variant combined 1 -- --set 'methods=["none"]' --set 'tiers=[1]' --set 'combined=true'
