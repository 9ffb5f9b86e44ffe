"""Scoped capture of layer inputs and output gradients; hooks never outlive the block.

A forward hook on each covered module records its input and replaces its output by an
identity "tap" (a custom autograd function) whose backward sees the output gradient.
All taps also take one scalar leaf ``z`` as input, so ``torch.autograd.grad(loss, z)``
runs the backward through every tapped layer without computing a single weight gradient
(autograd skips edges that do not lead to ``z``). Input statistics are reduced in the
forward hook and output statistics in the tap, so neither inputs nor output gradients of
all layers are held at once; only layers that need per-example gradients keep theirs
until the backward pass of a batch is over.

K-FAC-reduce (K8) aggregates the uses of a layer per example before any outer product:
the forward hooks add each call's inputs into per-example sums ``[N, i]`` (averaged and
squared when the batch ends), the taps add each call's output gradients into
per-example sums ``[N, o]`` (squared when the backward pass is over).

Every layer owns its statistics: hooks add into the layer's own sums and nothing is shared
between layers or batches. Layers that read the same input with the same mask (queries,
keys and values of attention) share only the work: the batch's statistic of that input is
computed once, kept until the batch ends, and added into each calling layer's own total.

While the hooks are on, ``kfacel.positions.row_layout`` tells the model how it may group
rows: ``BY_EXAMPLE`` when a record needs per-example gradients or sums (the examples
along the first dimension of every call), ``OWN`` when every record only sums over
positions (K5): then a model may chunk its sequences by length rather than pad them all
to the longest, each row one example's own, and marks those calls (``regrouped_rows``;
there an input of one row is a chunk of one row, not an input shared by the batch).

An input whose first dimension is 1 while the batch has ``N > 1`` examples (Hugging Face
passes position ids ``[1, S]`` for the whole batch) is the input of every row of the call
(K5): the hook expands the input and the layer's output along the first dimension (views,
no copy) to the call's own rows ``R``, so statistics and output gradients are per row.
``R`` is the first dimension of the innermost active ``kfacel.positions`` mask of shape
``[R, S]`` with ``R`` a multiple of ``N`` (an encoder run on the ``N·C`` candidate names of
``N`` queries marks ``[N·C, S]``), and ``N`` when no such mask is active. The model sees
the expanded output, which broadcasts like the original against per-row tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.curvature._gram import add_upper_gram_, upper_gram
from kfacel.curvature.layers import (
    LayerKind,
    input_rows,
    input_statistic,
    output_rows,
    positions_shape,
    statistic_signature,
)
from kfacel.positions import (
    RowLayout,
    active_masks,
    matching_mask,
    rows_laid_out,
    rows_regrouped,
)


@dataclass
class Call:
    """One call of a layer in the current forward pass.

    Attributes:
        groups: ``N``, the examples along the call's first dimension, or 1 for rows a
            model regrouped (``regrouped_rows``, only under ``RowLayout.OWN``).
        rows: ``[N, k, D_in]`` inputs (token ids ``[N, k]`` for an Embedding), kept only
            for per-example gradients.
        mask: ``[N, k]`` bool of real positions, or None when all are real.
        grads: ``[N, k, D_out]`` output gradients of the last backward pass.
    """

    groups: int
    rows: Tensor | None
    mask: Tensor | None
    grads: Tensor | None = None


@dataclass
class LayerRecord:
    """Accumulated statistics of one layer (sums and counts, so ranks can add them).

    The sums belong to this layer alone: no other record holds the same tensors.
    """

    name: str
    module: nn.Module
    kind: LayerKind
    factors: bool
    per_example: bool
    reduce: bool = False  # K-FAC-reduce (K8): uses aggregated per example
    aa: Tensor | None = (
        None  # [Σ a aᵀ, Σ a; ·, ·] upper triangle, [i(+1), i(+1)] (Embedding: counts [V])
    )
    uses: Tensor | None = None  # Σ_n R_n (reduce: N_A)
    gg: Tensor | None = None  # Σ g gᵀ  [o, o] (reduce: Σ ĝ ĝᵀ), upper triangle
    calls: list[Call] = field(default_factory=list)
    a_sum: Tensor | None = None  # reduce, this batch: Σ_u a_{n,u}  [N, i]
    a_count: Tensor | None = None  # reduce, this batch: U_n  [N]
    g_sum: Tensor | None = None  # reduce, this backward: ĝ_n = Σ_u g_{n,u}  [N, o]


_StatKey = tuple[object, ...]
"""(layer kind, statistic signature, id of the input, id of its mask or None)."""


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


def _expand_batch_shared(
    kind: LayerKind, module: nn.Module, x: Tensor, output: Tensor, n: int
) -> tuple[Tensor, Tensor]:
    """Input and output of a call, expanded to the call's rows when shared by the batch.

    A first position dimension of 1 with ``n > 1`` examples is one input for every row
    (position ids ``[1, S]``): both are expanded along the first dimension to the rows
    of :func:`_shared_rows` (K5).
    """
    batched = x.ndim == 3 if kind is LayerKind.CONV1D else x.ndim >= 2
    if n == 1 or not batched or x.shape[0] != 1 or output.shape[0] != 1:
        return x, output
    rows = _shared_rows(positions_shape(kind, module, x), n)
    x = x.expand(rows, *x.shape[1:])  # [R, ...], a view
    return x, output.expand(rows, *output.shape[1:])  # [R, ...]


def _shared_rows(shape: tuple[int, ...], n: int) -> int:
    """Rows ``R`` a batch-shared call with positions ``[1, *rest]`` stands for.

    The first dimension of the innermost active mask ``[R, *rest]`` whose ``R`` is a
    multiple of the ``n`` examples; ``n`` when no active mask fits.
    """
    for mask in active_masks():
        rows = int(mask.shape[0]) if mask.ndim == len(shape) else 0
        if rows > 1 and rows % n == 0 and tuple(mask.shape[1:]) == shape[1:]:
            return rows
    return n


class Capture:
    """Statistics of the recorded layers over the batches seen so far."""

    def __init__(self, records: dict[str, LayerRecord], dtype: torch.dtype):
        self.records = records
        self.dtype = dtype
        grouped = any(r.per_example or r.reduce for r in records.values())
        self.layout = RowLayout.BY_EXAMPLE if grouped else RowLayout.OWN
        self.examples = 0
        self._n = 0
        self._leaf: Tensor | None = None
        # this batch's input statistics by input: (input and mask kept alive so their
        # ids stay unique, Σ ā āᵀ or counts, uses); cleared at every batch boundary
        self._batch_stats: dict[_StatKey, tuple[Tensor, Any, Tensor, Tensor]] = {}

    # -- per batch -------------------------------------------------------------------

    def begin_batch(self, n: int, device: torch.device) -> None:
        """Start a forward pass over ``n`` examples."""
        self._n = n
        self.examples += n
        self._leaf = torch.zeros(
            (), device=device, dtype=self.dtype, requires_grad=True
        )
        self._batch_stats.clear()
        for rec in self.records.values():
            rec.calls.clear()

    def backward(self, loss: Tensor, retain_graph: bool) -> None:
        """Backpropagate ``loss`` to every tapped layer output (no weight gradients)."""
        assert self._leaf is not None, "begin_batch() first"
        for rec in self.records.values():
            rec.g_sum = None
            for call in rec.calls:
                call.grads = None
        torch.autograd.grad(
            loss, self._leaf, retain_graph=retain_graph, allow_unused=True
        )
        for rec in self.records.values():
            _add_example_grads(rec)

    def end_batch(self) -> None:
        """Add the batch's reduced inputs (K8); drop what the batch kept."""
        self._batch_stats.clear()
        self._leaf = None
        for rec in self.records.values():
            rec.calls.clear()
            rec.g_sum = None
            _add_example_inputs(rec, self.dtype)

    # -- hooks -----------------------------------------------------------------------

    def forward_hook(self, rec: LayerRecord) -> Callable[..., Tensor]:
        """The forward hook of one layer."""

        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            x = args[0]
            if not rows_regrouped():  # there a row of 1 is a chunk of one row
                x, output = _expand_batch_shared(rec.kind, module, x, output, self._n)
            shape = positions_shape(rec.kind, module, x)
            n = self._groups(rec, shape)
            mask = matching_mask(shape)
            if mask is not None and bool(mask.all()):
                mask = None  # all positions are real
            k = int(torch.Size(shape).numel()) // n
            rows = input_rows(rec.kind, module, x.detach())
            rows = rows.reshape(n, k, *rows.shape[1:])  # [N, k, D_in] or [N, k]
            mask_nk = None if mask is None else mask.reshape(n, k)
            if rec.factors and rec.reduce:
                _sum_example_inputs(rec, rows, mask_nk, self.dtype)
            elif rec.factors:
                self._add_input_stats(rec, args[0], mask, rows, mask_nk)
            call = Call(n, rows if rec.per_example else None, mask_nk)
            rec.calls.append(call)
            tapped: Tensor = _Tap.apply(  # type: ignore[no-untyped-call]
                output, self._leaf, self._grad_sink(rec, call)
            )
            return tapped

        return hook

    def _groups(self, rec: LayerRecord, shape: tuple[int, ...]) -> int:
        """How many groups a call's positions form: the batch's examples, or one.

        The first dimension must hold whole examples, except in rows a model marked
        as regrouped (``kfacel.positions.regrouped_rows``) under ``RowLayout.OWN``
        (sums over positions, K5), which form one group.
        """
        if not shape:
            raise ValueError(f"layer {rec.name!r} was called on a scalar position")
        if rows_regrouped():
            if self.layout is not RowLayout.OWN:
                raise ValueError(
                    f"layer {rec.name!r} was called on regrouped rows while "
                    "per-example statistics are recorded (RowLayout.BY_EXAMPLE)"
                )
            return 1
        if shape[0] % self._n != 0:
            raise ValueError(
                f"layer {rec.name!r} was called on positions {shape}, whose first "
                f"dimension is neither 1 (an input shared by the batch) nor a "
                f"multiple of the batch's {self._n} examples; per-example statistics "
                "need the examples along the first dimension"
            )
        return self._n

    def _add_input_stats(
        self,
        rec: LayerRecord,
        x: Tensor,
        mask: Tensor | None,
        rows: Tensor,
        mask_nk: Tensor | None,
    ) -> None:
        """Add this call's ``Σ ā āᵀ`` and uses into the layer's own sums, eq. (K5).

        The statistic of one (input, mask) pair is computed once per batch and added
        into the total of every layer that reads it (queries, keys and values of
        attention), so sharing saves the work without sharing any accumulator.
        """
        key = (rec.kind, statistic_signature(rec.kind, rec.module), id(x), id(mask))
        cached = self._batch_stats.get(key)
        if cached is None:
            flat = rows.reshape(-1, *rows.shape[2:])  # [P, D_in] or [P]
            if mask_nk is not None:
                flat = flat[mask_nk.reshape(-1)]  # real positions only
            stat = input_statistic(rec.kind, rec.module, flat, self.dtype)
            uses = torch.full(
                (), float(flat.shape[0]), dtype=self.dtype, device=flat.device
            )
            self._batch_stats[key] = (x, mask, stat, uses)
        else:
            _, _, stat, uses = cached
        rec.aa = stat.clone() if rec.aa is None else rec.aa.add_(stat)
        rec.uses = uses.clone() if rec.uses is None else rec.uses.add_(uses)  # Σ_n R_n

    def _grad_sink(self, rec: LayerRecord, call: Call) -> Callable[[Tensor], None]:
        def sink(grad: Tensor) -> None:
            g = output_rows(rec.kind, rec.module, grad.detach()).to(
                self.dtype
            )  # [P, o]
            g = g.reshape(call.groups, -1, g.shape[-1])  # [N, k, o]
            if call.mask is not None and (rec.reduce or rec.per_example):
                g = g * call.mask.unsqueeze(-1).to(g.dtype)  # padding is no use
            if rec.factors and rec.reduce:
                g_n = g.sum(1)  # ĝ_n = Σ_u g_{n,u}  [N, o], eq. (K8)
                rec.g_sum = g_n if rec.g_sum is None else rec.g_sum.add_(g_n)
            elif rec.factors:
                flat = g.reshape(-1, g.shape[-1])
                if call.mask is not None:  # real positions only (no zeroing needed)
                    flat = flat[call.mask.reshape(-1)]
                if rec.gg is None:  # Σ g gᵀ  [o, o], eq. (K5), upper triangle
                    rec.gg = upper_gram(flat)
                else:
                    add_upper_gram_(rec.gg, flat)
            if rec.per_example:
                call.grads = g

        return sink


def _sum_example_inputs(
    rec: LayerRecord, rows: Tensor, mask_nk: Tensor | None, dtype: torch.dtype
) -> None:
    """Add one call's ``Σ_u a_{n,u}`` and ``U_n`` (real uses) per example, eq. (K8).

    Args:
        rec: a Linear or Conv1d layer with ``reduce`` set.
        rows: ``[N, k, i]`` the call's inputs (Conv1d: unfolded patches).
        mask_nk: ``[N, k]`` bool of real positions, or None when all are real.
        dtype: dtype of the statistics.
    """
    a = rows.to(dtype)  # [N, k, i]
    if mask_nk is None:
        count = a.new_full(a.shape[:1], float(a.shape[1]))  # U_n  [N]
    else:
        a = a.masked_fill(~mask_nk.unsqueeze(-1), 0.0)  # padding is no use
        count = mask_nk.sum(1).to(dtype)  # U_n  [N]
    total = a.sum(1)  # Σ_u a_{n,u}  [N, i]
    rec.a_sum = total if rec.a_sum is None else rec.a_sum.add_(total)
    rec.a_count = count if rec.a_count is None else rec.a_count.add_(count)


def _add_example_inputs(rec: LayerRecord, dtype: torch.dtype) -> None:
    """Add the batch's ``Σ_n ā_n ā_nᵀ`` and ``N_A`` into the layer's sums, eq. (K8).

    ``ā_n`` is the mean input of example n over its real uses (bias 1 appended by
    :func:`input_statistic`); examples that did not use the layer do not count.
    """
    if rec.a_sum is None or rec.a_count is None:
        return
    used = rec.a_count > 0  # [N]
    mean = rec.a_sum[used] / rec.a_count[used].unsqueeze(1)  # ā_n, no 1  [N_A, i]
    stat = input_statistic(rec.kind, rec.module, mean, dtype)  # Σ_n ā_n ā_nᵀ
    n_a = used.sum().to(dtype)  # N_A
    rec.aa = stat if rec.aa is None else rec.aa.add_(stat)
    rec.uses = n_a if rec.uses is None else rec.uses.add_(n_a)
    rec.a_sum = rec.a_count = None


def _add_example_grads(rec: LayerRecord) -> None:
    """Add one backward's ``Σ_n ĝ_n ĝ_nᵀ`` into the layer's G sum, eq. (K8)."""
    if rec.g_sum is None:
        return
    g = rec.g_sum  # [N, o]
    if rec.gg is None:  # Σ_n ĝ_n ĝ_nᵀ  [o, o], upper triangle
        rec.gg = upper_gram(g)
    else:
        add_upper_gram_(rec.gg, g)
    rec.g_sum = None


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
        with rows_laid_out(cap.layout):
            yield cap
    finally:
        for h in handles:
            h.remove()
        cap.end_batch()
