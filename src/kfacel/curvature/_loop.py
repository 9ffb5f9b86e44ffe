"""The batch loop both estimators share: forward, Fisher targets, backward to layer outputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kfacel._progress import with_progress
from kfacel.curvature._capture import LayerRecord, capture_layers
from kfacel.curvature._per_example import accumulate_squared_grads
from kfacel.curvature._select import eval_mode, to_device, unpack
from kfacel.curvature.targets import fisher_targets
from kfacel.types import FisherKind


def run_batches(
    model: nn.Module,
    batches: Iterable[tuple[Any, Tensor]],
    records: dict[str, LayerRecord],
    *,
    kind: FisherKind,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
    progress: bool,
    desc: str,
) -> tuple[int, dict[str, Tensor]]:
    """Accumulate the statistics of ``records`` over ``batches``.

    Per batch: one forward in eval mode, then one backward to the tapped layer outputs
    per Fisher target (K4) of the sum-reduced loss ``Σ_n scale_n ℓ_n(y_n)``; Kronecker
    statistics accumulate in the records, per-example squared gradients in the returned
    sums. Returns the number of examples seen and those sums (by parameter name).
    """
    sums: dict[str, Tensor] = {}
    with (
        eval_mode(model),
        torch.enable_grad(),
        capture_layers(model, records, dtype) as cap,
    ):
        for item in with_progress(batches, enabled=progress, desc=desc):
            inputs, labels = unpack(item)
            inputs, labels = to_device(inputs, device), labels.to(device)
            cap.begin_batch(int(labels.shape[0]), device)
            logits = model(inputs)  # [N, C]
            targets = list(fisher_targets(kind, logits, labels, generator))
            for t, (y, scale) in enumerate(targets):
                losses = F.cross_entropy(logits, y, reduction="none")  # [N]
                loss = losses.sum() if scale is None else (losses * scale).sum()
                cap.backward(loss, retain_graph=t < len(targets) - 1)
                accumulate_squared_grads(records, sums)
            cap.end_batch()
        return cap.examples, sums
