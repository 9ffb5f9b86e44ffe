"""Scoped capture of layer inputs and output gradients; hooks never outlive the block.

A forward hook on each covered module records its input and replaces its output by an
identity "tap" (a custom autograd function) whose backward sees the output gradient.
All taps also take one scalar leaf ``z`` as input, so ``torch.autograd.grad(loss, z)``
runs the backward through every tapped layer without computing a single weight gradient
(autograd skips edges that do not lead to ``z``). Input statistics are reduced in the
forward hook and output statistics in the tap, so neither inputs nor output gradients of
all layers are held at once; only layers that need per-example gradients keep theirs
until the backward pass of a batch is over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.curvature.layers import (
    LayerKind,
    has_bias,
    input_rows,
    output_rows,
    positions_shape,
)
from kfacel.positions import matching_mask


@dataclass
class Call:
    """One call of a layer in the current forward pass.

    Attributes:
        rows: ``[N, k, D_in]`` inputs (token ids ``[N, k]`` for an Embedding), kept only
            for per-example gradients.
        mask: ``[N, k]`` bool of real positions, or None when all are real.
        grads: ``[N, k, D_out]`` output gradients of the last backward pass.
    """

    rows: Tensor | None
    mask: Tensor | None
    grads: Tensor | None = None


@dataclass
class LayerRecord:
    """Accumulated statistics of one layer (sums and counts, so ranks can add them)."""

    name: str
    module: nn.Module
    kind: LayerKind
    factors: bool
    per_example: bool
    aa: Tensor | None = (
        None  # [Σ a aᵀ, Σ a; ·, ·] [i(+1), i(+1)] (Embedding: counts [V])
    )
    uses: Tensor | None = None  # Σ_n R_n
    gg: Tensor | None = None  # Σ g gᵀ  [o, o]
    alias: LayerRecord | None = None  # shares aa, a, uses with this layer (same input)
    calls: list[Call] = field(default_factory=list)


class _Tap(torch.autograd.Function):
    """Identity on a layer output whose backward hands the gradient to a sink."""

    @staticmethod
    def forward(
        ctx: Any, out: Tensor, leaf: Tensor, sink: Callable[[Tensor], None]
    ) -> Tensor:
        ctx.sink = sink
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        ctx.sink(grad)
        return grad, grad.new_zeros(()), None


def _add(acc: Tensor | None, value: Tensor) -> Tensor:
    return value if acc is None else acc.add_(value)


class Capture:
    """Statistics of the recorded layers over the batches seen so far."""

    def __init__(self, records: dict[str, LayerRecord], dtype: torch.dtype):
        self.records = records
        self.dtype = dtype
        self.examples = 0
        self._n = 0
        self._leaf: Tensor | None = None
        self._shared: dict[int, tuple[Tensor, Tensor | None, LayerRecord]] = {}

    # -- per batch -------------------------------------------------------------------

    def begin_batch(self, n: int, device: torch.device) -> None:
        """Start a forward pass over ``n`` examples."""
        self._n = n
        self.examples += n
        self._leaf = torch.zeros(
            (), device=device, dtype=self.dtype, requires_grad=True
        )
        self._shared.clear()
        for rec in self.records.values():
            rec.calls.clear()

    def backward(self, loss: Tensor, retain_graph: bool) -> None:
        """Backpropagate ``loss`` to every tapped layer output (no weight gradients)."""
        assert self._leaf is not None, "begin_batch() first"
        for rec in self.records.values():
            for call in rec.calls:
                call.grads = None
        torch.autograd.grad(
            loss, self._leaf, retain_graph=retain_graph, allow_unused=True
        )

    def end_batch(self) -> None:
        """Drop what the batch kept (inputs, gradients, shared-input cache)."""
        self._shared.clear()
        self._leaf = None
        for rec in self.records.values():
            rec.calls.clear()

    # -- hooks -----------------------------------------------------------------------

    def forward_hook(self, rec: LayerRecord) -> Callable[..., Tensor]:
        """The forward hook of one layer."""

        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            x = args[0]
            shape = positions_shape(rec.kind, module, x)
            n = self._n
            if not shape or shape[0] % n != 0:
                raise ValueError(
                    f"layer {rec.name!r} was called on positions {shape}, whose first "
                    f"dimension is not a multiple of the batch's {n} examples; per-example "
                    "statistics need the examples along the first dimension (e.g. pass "
                    "position ids expanded to the batch)"
                )
            mask = matching_mask(shape)
            k = int(torch.Size(shape).numel()) // n
            rows = input_rows(rec.kind, module, x.detach())
            rows = rows.reshape(n, k, *rows.shape[1:])  # [N, k, D_in] or [N, k]
            mask_nk = None if mask is None or bool(mask.all()) else mask.reshape(n, k)
            if rec.factors:
                self._add_input_stats(rec, x, rows, mask_nk)
            call = Call(rows if rec.per_example else None, mask_nk)
            rec.calls.append(call)
            tapped: Tensor = _Tap.apply(  # type: ignore[no-untyped-call]
                output, self._leaf, self._grad_sink(rec, call)
            )
            return tapped

        return hook

    def _add_input_stats(
        self, rec: LayerRecord, x: Tensor, rows: Tensor, mask: Tensor | None
    ) -> None:
        """Add Σ ā āᵀ of one call, eq. (K5), computed once for layers sharing an input.

        Layers that read the same input tensor with the same mask (queries, keys and
        values of attention) share one accumulator: the first accumulates, the others
        alias it. A layer whose sharing changes gets its own copy before it diverges.
        """
        key = id(x) if rec.kind is LayerKind.LINEAR else None
        owner = self._shared.get(key) if key is not None else None
        if owner is not None and owner[1] is mask and owner[2] is not rec:
            first = owner[2]
            if rec.aa is None:  # first batch: alias the owner's accumulators
                rec.aa, rec.uses, rec.alias = first.aa, first.uses, first
                return
            if rec.alias is first:  # counted by the owner already
                return
        if rec.alias is not None:  # sharing ended: continue on a private copy
            assert rec.aa is not None and rec.uses is not None
            rec.aa, rec.uses, rec.alias = rec.aa.clone(), rec.uses.clone(), None
        flat = rows.reshape(-1, *rows.shape[2:])  # [P, D_in] or [P]
        if mask is not None:
            flat = flat[mask.reshape(-1)]
        if rec.kind is LayerKind.EMBEDDING:
            assert isinstance(rec.module, nn.Embedding)
            counts = torch.bincount(flat, minlength=rec.module.num_embeddings)
            rec.aa = _add(rec.aa, counts.to(self.dtype))  # token counts  [V]
        else:
            flat = flat.to(self.dtype)
            i = flat.shape[1]
            if rec.aa is None:  # Σ ā āᵀ in the layout of A: bias coordinate last
                size = i + 1 if has_bias(rec.module) else i
                rec.aa = flat.new_zeros(size, size)
            rec.aa[:i, :i].addmm_(flat.T, flat)  # Σ a aᵀ
            if rec.aa.shape[0] > i:
                rec.aa[:i, i] += flat.sum(0)  # Σ a (the row is mirrored at the end)
        uses = torch.full(
            (), float(flat.shape[0]), dtype=self.dtype, device=flat.device
        )
        rec.uses = _add(rec.uses, uses)  # Σ_n R_n
        if key is not None:
            self._shared[key] = (x, mask, rec)

    def _grad_sink(self, rec: LayerRecord, call: Call) -> Callable[[Tensor], None]:
        n = self._n

        def sink(grad: Tensor) -> None:
            g = output_rows(rec.kind, rec.module, grad.detach()).to(
                self.dtype
            )  # [P, o]
            g = g.reshape(n, -1, g.shape[-1])  # [N, k, o]
            if call.mask is not None:
                g = g * call.mask.unsqueeze(-1).to(g.dtype)  # padding is no use
            if rec.factors:
                flat = g.reshape(-1, g.shape[-1])
                if rec.gg is None:
                    rec.gg = flat.T @ flat  # Σ g gᵀ  [o, o], eq. (K5)
                else:
                    rec.gg.addmm_(flat.T, flat)
            if rec.per_example:
                call.grads = g

        return sink


@contextmanager
def capture_layers(
    model: nn.Module, records: dict[str, LayerRecord], dtype: torch.dtype
) -> Iterator[Capture]:
    """Hook the recorded layers of ``model`` for the duration of the block."""
    cap = Capture(records, dtype)
    handles = [
        rec.module.register_forward_hook(cap.forward_hook(rec))
        for rec in records.values()
    ]
    try:
        yield cap
    finally:
        for h in handles:
            h.remove()
        cap.end_batch()
