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


def add_grad(p: Tensor, g: Tensor, scale: float = 1.0) -> None:
    """``p.grad += scale · g`` (allocating ``p.grad`` when it is None; nothing at 0)."""
    if scale == 0:
        return
    if p.grad is None:
        g = g.detach().to(p.dtype)
        p.grad = g.clone() if scale == 1 else g.mul(scale)
    elif scale == 1:
        p.grad.add_(g.to(p.grad.dtype))
    else:
        p.grad.add_(g.to(p.grad.dtype), alpha=scale)


def zero_like_model(model: nn.Module) -> Tensor:
    """A scalar zero on the model's device."""
    p = next(model.parameters())
    return torch.zeros(
        (), device=p.device, dtype=torch.promote_types(p.dtype, torch.float32)
    )
