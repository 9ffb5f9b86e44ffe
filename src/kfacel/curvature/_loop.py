"""The batch loop both estimators share: forward, Fisher targets, backward to layer outputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kfacel._progress import with_progress
from kfacel.curvature._capture import LayerRecord, capture_layers
from kfacel.curvature._per_example import accumulate_squared_grads
from kfacel.curvature._select import call_model, eval_mode, to_device, unpack
from kfacel.curvature.targets import IGNORE, fisher_targets
from kfacel.positions import valid_positions
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

    Per batch: one forward in eval mode (``model(**inputs)`` for a mapping, logits read
    from ``.logits`` when present), then one backward to the tapped layer outputs per
    Fisher target (K4) of the sum-reduced loss ``Σ_n Σ_s scale_{n,s} ℓ_{n,s}`` (K9); Kronecker
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
            with _attention_mask_marks(inputs):
                logits = call_model(model, inputs)  # [N, C] or [N, S, C]
            targets = list(fisher_targets(kind, logits, labels, generator))
            for t, (y, scale) in enumerate(targets):
                loss = _summed_loss(logits, y, scale)  # Σ_n Σ_s ℓ_{n,s}, eq. (K9)
                cap.backward(loss, retain_graph=t < len(targets) - 1)
                accumulate_squared_grads(records, sums)
            cap.end_batch()
        return cap.examples, sums


def _summed_loss(logits: Tensor, y: Tensor, scale: Tensor | None) -> Tensor:
    """``Σ scale · ℓ(y)`` over every example and term; ``-100`` labels add 0 (K9)."""
    c = logits.shape[-1]
    losses = F.cross_entropy(
        logits.reshape(-1, c), y.reshape(-1), reduction="none", ignore_index=IGNORE
    )  # [N S]
    return losses.sum() if scale is None else (losses * scale.reshape(-1)).sum()


def _attention_mask_marks(inputs: Any) -> AbstractContextManager[None]:
    """Mark a mapping batch's ``attention_mask`` ``[N, S]`` as its real positions (K5).

    The Hugging Face name of the padding mask: layers called on ``[N, S]`` positions
    (and batch-shared ``[1, S]`` ones, expanded to ``[N, S]``) skip the padding.
    """
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(mask, Tensor) and mask.ndim == 2:
        return valid_positions(mask.bool())
    return nullcontext()
