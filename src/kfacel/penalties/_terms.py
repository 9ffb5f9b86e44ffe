"""What every penalty shares: the anchor check, gradient accumulation and a zero."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from kfacel.types import ParamDict


def check_anchor(
    anchor: ParamDict, model_params: Mapping[str, Tensor], names: Iterable[str]
) -> None:
    """Raise ``ValueError`` naming every parameter missing from, or shaped unlike, the model."""
    problems = []
    for name in names:
        if name not in anchor:
            problems.append(f"{name}: not in the anchor")
        elif name not in model_params:
            problems.append(f"{name}: not in the model")
        elif anchor[name].shape != model_params[name].shape:
            problems.append(
                f"{name}: anchor {tuple(anchor[name].shape)} vs model "
                f"{tuple(model_params[name].shape)}"
            )
    if problems:
        raise ValueError("penalty does not match the model: " + "; ".join(problems))


def add_grad(p: Tensor, g: Tensor) -> None:
    """``p.grad += g`` (allocating ``p.grad`` when it is None)."""
    if p.grad is None:
        p.grad = g.detach().to(p.dtype).clone()
    else:
        p.grad.add_(g.to(p.grad.dtype))


def zero_like_model(model: nn.Module) -> Tensor:
    """A scalar zero on the model's device."""
    p = next(model.parameters())
    return torch.zeros(
        (), device=p.device, dtype=torch.promote_types(p.dtype, torch.float32)
    )
