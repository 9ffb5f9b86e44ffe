"""Refresh learning's unlearning step: unlearn, then relearn.

Wang et al. 2024, "A Unified and General Framework for Continual Learning" (ICLR).
Before each training step the weights first move *up* the objective ``L`` (the task loss
plus the consolidation penalty, the continual objective as a whole), preconditioned by
the inverse of a diagonal Fisher, with Langevin noise of temperature ``T``; the step then
goes on from there (relearn). With ``D`` the optimizer's diagonal preconditioner and
``η_t`` the step's learning rate:

    (R1)   θ' = θ + ρ η_t clip(D⁻¹ ∇L(θ), ±1) + √(2 ρ η_t T) D^{-1/2} ξ,   ξ ~ N(0, I)

The paper writes ``D = F``, the Fisher diagonal; kfacel takes Adam's own preconditioner
``D = √v̂ + ε``, with ``v̂`` the bias-corrected running mean of squared gradients (an
empirical Fisher diagonal) updated with the current gradient as Adam's next step would
update it, so that ``|∇L| / D`` stays bounded (by ``1/√(1−β₂)``) even for a weight whose
gradient was 0 until now. That bound is ~30 Adam steps, so kfacel also clips each
weight's ratio at 1: the move never exceeds ``ρ η_t`` a weight, ``ρ`` of Adam's largest
step. Unclipped, a gradient growing faster than its running mean makes the ascent outrun
Adam's descent, and the ascent of the penalty feeds on itself (measured: the CNN
headline's 10-epoch update with the forgetting budget diverged at ρ = 0.25).
The noise goes only where ``v̂ > 0`` (a weight no batch has used has no Fisher to scale
it by). Under SGD ``D = I`` and nothing is clipped: plain gradient ascent. Before the
optimizer's first step there is no ``v̂`` and no unlearning.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def unlearn_(
    opt: torch.optim.Optimizer,
    rho: float,
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> int:
    """Move every parameter of ``opt`` with a gradient by eq. R1, in place.

    Args:
        opt: the training optimizer; its parameters' ``.grad`` hold ``∇L(θ)``.
        rho: the unlearning step as a share of each group's learning rate.
        temperature: ``T`` of the Langevin noise (0: none).
        generator: the noise's random generator (CPU), for reproducible runs.

    Returns:
        How many parameter tensors moved (0 before Adam's first step).
    """
    moved = 0
    for group in opt.param_groups:
        eta = rho * float(group["lr"])
        eps = float(group.get("eps", 0.0))
        beta2 = float(group.get("betas", (0.0, 0.0))[1])
        for p in group["params"]:
            if p.grad is None:
                continue
            state = opt.state.get(p, {})
            d = _preconditioner(state, p.grad, eps, beta2, adam="betas" in group)
            if d is None:
                continue
            move = p.grad / d
            if "betas" in group:  # Adam: at most ρ of its largest step
                move.clamp_(-1.0, 1.0)
            p.add_(move, alpha=eta)
            if temperature > 0:
                noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
                noise = noise.to(p.device) / d.sqrt()
                if "betas" in group:
                    noise = noise.where(d > eps, 0.0)
                p.add_(noise, alpha=math.sqrt(2 * eta * temperature))
            moved += 1
    return moved


def _preconditioner(
    state: dict, grad: torch.Tensor, eps: float, beta2: float, *, adam: bool
) -> torch.Tensor | None:
    """``√v̂ + ε`` with ``grad`` taken in (None before Adam's first step); 1 under SGD."""
    if not adam:
        return torch.ones_like(grad)
    v = state.get("exp_avg_sq")
    if v is None:
        return None
    step = float(state["step"]) + 1
    v = v * beta2 + (1 - beta2) * grad.square()
    return (v / (1 - beta2**step)).sqrt_().add_(eps)
