"""The penalty protocol shared by L2, diagonal EWC and KFC, and the empty penalty."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Penalty(Protocol):
    """A consolidation penalty ``R(θ)``, eq. (P1) of ``curvature.conventions``.

    ``__call__`` gives the value as a differentiable tensor (for research loops and tests);
    ``add_grad_`` is the trainer's fast path: it adds ``∂R/∂θ`` (closed form, eq. P3) to
    each parameter's ``.grad`` without building a graph and returns the detached value.
    Call it after ``loss.backward()`` (and after unscaling under mixed precision).
    """

    @property
    def num_tasks(self) -> int:
        """How many finished tasks the penalty holds a term for."""
        ...

    def __call__(self, model: nn.Module) -> Tensor:
        """``R(θ)`` at the model's parameters, differentiable."""
        ...

    def add_grad_(self, model: nn.Module) -> Tensor:
        """Add ``∂R/∂θ`` to ``.grad`` in place; return ``R(θ)`` detached."""
        ...


class NoPenalty:
    """Plain fine-tuning: ``R(θ) = 0``."""

    num_tasks = 0

    def __call__(self, model: nn.Module) -> Tensor:
        """Zero, on the model's device and dtype."""
        return _zero(model)

    def add_grad_(self, model: nn.Module) -> Tensor:
        """Add nothing; return zero."""
        return _zero(model)


def _zero(model: nn.Module) -> Tensor:
    p = next(model.parameters(), None)
    return torch.zeros(()) if p is None else p.new_zeros(())
