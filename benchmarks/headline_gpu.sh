#!/bin/bash
# The two headline experiments on one GPU, then their reports: the CNN and the transformer
# ranker, arms `product` and `paper` each, three seeds, tiers 1-3, the paper's 10 epochs
# (configs/headline-cnn.toml, configs/headline-transformer.toml; docs/results.md, section
# "Headline: forgetting removed (out of sample)"). Resumable: run it again to finish.
# Needs the CUDA build of torch and ../shared/data (or DATA=path). On 2 CPU cores the CNN
# headline alone takes many hours (`kfacel experiment configs/headline-cnn.toml --jobs 2`).
#   bash benchmarks/headline_gpu.sh [DATA]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
[ -f tasks/public3-small/ncbi/test.jsonl ] ||
  kfacel prepare benchmark --data "$DATA" --out tasks/public3-small --small
for name in headline-cnn headline-transformer; do
  kfacel experiment "configs/$name.toml" --set train.device=cuda
  kfacel report "runs/$name"
done
