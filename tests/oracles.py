"""Brute-force references, written for clarity rather than speed (docs/contributing.md).

Nothing here uses kfacel's capture machinery: per-example gradients come from a loop of
``torch.autograd.grad`` calls, one example and one label at a time, and layer inputs and
output gradients from plain hooks with ``retain_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TOL64 = {"rtol": 1e-9, "atol": 1e-12}
TOL32 = {"rtol": 1e-5, "atol": 1e-7}


def run(model: nn.Module, inputs: Any) -> Tensor:
    """Logits of ``inputs``: keyword arguments for a mapping, ``.logits`` when present.

    A mapping's ``attention_mask`` marks the real positions, as the estimators do (K5).
    """
    from kfacel.positions import valid_positions

    if not isinstance(inputs, Mapping):
        return model(inputs)
    mask = inputs.get("attention_mask")
    with valid_positions(mask.bool()) if mask is not None else nullcontext():
        out = model(**inputs)
    return getattr(out, "logits", out)


def loss_sum(logits: Tensor, y: Tensor) -> Tensor:
    """``Σ ℓ`` over every term of ``logits [.., C]``; labels -100 are no term (K9)."""
    c = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, c), y.reshape(-1), reduction="sum", ignore_index=-100
    )


def example_targets(
    logits: Tensor, label: Tensor, kind: str
) -> list[tuple[float, Tensor]]:
    """``(weight, labels)`` pairs of one example whose expectation is eq. (K4)/(K9).

    ``empirical``: the gold labels of every term at once, weight 1. ``exact``: each
    term s alone with each class c, weight ``p_s(c)``, every other term -100.
    """
    if kind == "empirical":
        return [(1.0, label)]
    probs = F.softmax(logits.detach(), -1).reshape(-1, logits.shape[-1])  # [T, C]
    flat = label.reshape(-1)
    out = []
    for s in range(flat.shape[0]):
        if int(flat[s]) == -100:
            continue
        for c in range(probs.shape[1]):
            if probs[s, c] > 0:
                y = torch.full_like(flat, -100)
                y[s] = c
                out.append((float(probs[s, c]), y.reshape(label.shape)))
    # no term at all: one zero-weight pass, so the example's inputs still count
    return out or [(0.0, torch.full_like(label, -100))]


def folded_grad(module: nn.Module, grads: dict[str, Tensor], name: str) -> Tensor:
    """Row-major ``vec([W | b])`` of one layer's gradient (Embedding: ``vec(weight.T)``)."""
    w = grads[f"{name}.weight"]
    if isinstance(module, nn.Embedding):
        return w.T.reshape(-1)
    w = w.reshape(w.shape[0], -1)
    b = grads.get(f"{name}.bias")
    return (w if b is None else torch.cat([w, b[:, None]], 1)).reshape(-1)


def per_example_losses(
    model: nn.Module,
    inputs: Any,
    index: int,
    label: int,
    select: Callable[[Any, int], Any],
) -> Tensor:
    """Loss of example ``index`` at class ``label``, from a forward of that example alone."""
    logits = run(model, select(inputs, index))  # [1, C]
    return F.cross_entropy(logits, torch.tensor([label]), reduction="sum")


def per_example_grads(
    model: nn.Module,
    inputs: Any,
    labels: Tensor,
    *,
    kind: str,
    select: Callable[[Any, int], Any] = lambda x, n: x[n : n + 1],
) -> list[list[tuple[float, dict[str, Tensor]]]]:
    """For each example, the list of ``(weight, {param: grad})`` over its labels (K4).

    ``empirical``: the gold label with weight 1. ``exact``: every class c with weight
    ``p(c | x_n)``.
    """
    params = dict(model.named_parameters())
    out = []
    n = int(labels.shape[0])
    for i in range(n):
        x = select(inputs, i)
        logits = run(model, x)  # [1, C] or [1, S, C]
        items = []
        for w, y in example_targets(logits, labels[i : i + 1], kind):
            loss = loss_sum(run(model, x), y)
            gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            grads = {
                k: (g if g is not None else torch.zeros_like(params[k]))
                for k, g in zip(params, gs, strict=True)
            }
            items.append((w, grads))
        out.append(items)
    return out


def fisher_block(model: nn.Module, examples: list, name: str) -> Tensor:
    """Exact Fisher block of layer ``name`` in folded row-major order, eq. (K3)."""
    module = dict(model.named_modules())[name]
    blocks = []
    for items in examples:
        blocks.append(
            sum(
                w * torch.outer(v, v)
                for w, g in items
                for v in [folded_grad(module, g, name)]
            )
        )
    return torch.stack(blocks).mean(0)


def fisher_diagonal(examples: list) -> dict[str, Tensor]:
    """Exact diagonal Fisher per parameter, eq. (K7)."""
    names = examples[0][0][1].keys()
    return {
        k: torch.stack(
            [sum(w * g[k] ** 2 for w, g in items) for items in examples]
        ).mean(0)
        for k in names
    }


def layer_io(model: nn.Module, names: list[str], inputs: Any, labels: Tensor) -> dict:
    """Per-call inputs and output gradients of named layers, from plain hooks.

    The loss is the sum of per-example gold-label losses, so the gradient at an output row
    of example n is that example's own gradient.
    """
    modules = dict(model.named_modules())
    store: dict[str, list[tuple[Tensor, Tensor]]] = {k: [] for k in names}
    handles = []
    for k in names:

        def hook(mod: nn.Module, args: tuple, out: Tensor, k: str = k) -> None:
            out.retain_grad()
            store[k].append((args[0].detach(), out))

        handles.append(modules[k].register_forward_hook(hook))
    try:
        logits = run(model, inputs)
        F.cross_entropy(logits, labels, reduction="sum").backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    return {k: [(x, out.grad.detach()) for x, out in v] for k, v in store.items()}


def _call_rows(module: nn.Module, x: Tensor, out: Tensor) -> tuple[Tensor, tuple]:
    """Inputs of one call as rows ``[P, i]`` (bias 1 appended) and its position shape.

    Written from each module's definition: Linear acts on the last dimension, Conv1d on
    zero-padded patches ``(c_in, k)`` flattened channel-major, Embedding on one-hots.
    """
    if isinstance(module, nn.Embedding):
        rows = F.one_hot(x.reshape(-1), module.num_embeddings).double()
        return rows, tuple(x.shape)
    if isinstance(module, nn.Conv1d):
        (k,), (pad,) = module.kernel_size, module.padding
        xp = F.pad(x, (pad, pad))  # [1, c_in, L + 2 pad]
        length = out.shape[-1]
        patches = [
            xp[0, :, t * module.stride[0] : t * module.stride[0] + k].reshape(-1)
            for t in range(length)
        ]
        rows = torch.stack(patches).double()  # [L_out, c_in * k]
        shape: tuple = (1, length)
    else:
        rows = x.reshape(-1, x.shape[-1]).double()
        shape = tuple(x.shape[:-1])
    if getattr(module, "bias", None) is not None:
        rows = torch.cat([rows, torch.ones_like(rows[:, :1])], 1)
    return rows, shape


def _out_rows(module: nn.Module, g: Tensor) -> Tensor:
    if isinstance(module, nn.Conv1d):
        return g[0].T  # [L_out, c_out]
    return g.reshape(-1, g.shape[-1])


def kfac_factors(
    model: nn.Module,
    inputs: Any,
    labels: Tensor,
    names: list[str],
    *,
    kind: str,
    select: Callable[[Any, int], Any] = lambda x, n: x[n : n + 1],
) -> dict[str, tuple[Tensor, Tensor]]:
    """``(A, G)`` of eq. (K5) per layer from one forward per example and label.

    Each example is run alone, so an input shared by the batch is simply its own input.
    Padding is read from ``kfacel.positions`` (the protocol models use to mark it).
    ``A`` of an Embedding is the vector of token frequencies (K6).
    """
    from kfacel.positions import matching_mask

    modules = dict(model.named_modules())
    sums = {k: [0.0, 0.0, 0.0] for k in names}  # Σ ā āᵀ, Σ_n R_n, Σ g gᵀ
    for n in range(int(labels.shape[0])):
        x_n = select(inputs, n)
        targets = example_targets(run(model, x_n), labels[n : n + 1], kind)
        for t, (w, y) in enumerate(targets):
            calls: dict[str, list] = {k: [] for k in names}
            handles = []
            for k in names:

                def hook(mod, args, out, k=k, calls=calls):
                    out.retain_grad()
                    rows, shape = _call_rows(mod, args[0].detach(), out)
                    mask = matching_mask(shape)
                    keep = torch.ones(rows.shape[0], dtype=torch.bool)
                    if mask is not None:
                        keep = mask.reshape(-1)
                    calls[k].append((rows, keep, out))

                handles.append(modules[k].register_forward_hook(hook))
            try:
                loss_sum(run(model, x_n), y).backward()
            finally:
                for h in handles:
                    h.remove()
            for k in names:
                for rows, keep, out in calls[k]:
                    g = _out_rows(modules[k], out.grad.detach())[keep]
                    sums[k][2] = sums[k][2] + w * g.T @ g  # Σ_r g gᵀ
                    if t == 0:  # inputs do not depend on the label
                        a = rows[keep]
                        sums[k][0] = sums[k][0] + a.T @ a  # Σ_r ā āᵀ
                        sums[k][1] = sums[k][1] + a.shape[0]
    model.zero_grad(set_to_none=True)
    out = {}
    for k in names:
        aa, uses, gg = sums[k]
        A = aa / uses
        if isinstance(modules[k], nn.Embedding):
            A = torch.diagonal(A)
        out[k] = (A, gg / int(labels.shape[0]))
    return out


def kfac_reduce_factors(
    model: nn.Module,
    inputs: Any,
    labels: Tensor,
    names: list[str],
    *,
    kind: str,
    select: Callable[[Any, int], Any] = lambda x, n: x[n : n + 1],
) -> dict[str, tuple[Tensor, Tensor]]:
    """``(A, G)`` of eq. (K8) per layer from one forward per example and label.

    Per example: ``ā_n`` the mean of its real input rows over all calls (bias column
    included, so its last entry is 1) and ``ĝ_n`` the sum of its real output-gradient
    rows. Embeddings keep eq. (K5)–(K6), taken from :func:`kfac_factors`.
    """
    from kfacel.positions import matching_mask

    modules = dict(model.named_modules())
    expand = kfac_factors(model, inputs, labels, names, kind=kind, select=select)
    sums = {k: [0.0, 0, 0.0] for k in names}  # Σ ā āᵀ, N_A, Σ w ĝ ĝᵀ
    for n in range(int(labels.shape[0])):
        x_n = select(inputs, n)
        targets = example_targets(run(model, x_n), labels[n : n + 1], kind)
        for t, (w, y) in enumerate(targets):
            calls: dict[str, list] = {k: [] for k in names}
            handles = []
            for k in names:

                def hook(mod, args, out, k=k, calls=calls):
                    out.retain_grad()
                    rows, shape = _call_rows(mod, args[0].detach(), out)
                    mask = matching_mask(shape)
                    keep = torch.ones(rows.shape[0], dtype=torch.bool)
                    if mask is not None:
                        keep = mask.reshape(-1)
                    calls[k].append((rows, keep, out))

                handles.append(modules[k].register_forward_hook(hook))
            try:
                loss_sum(run(model, x_n), y).backward()
            finally:
                for h in handles:
                    h.remove()
            for k in names:
                if not calls[k]:
                    continue
                rows = torch.cat([r[keep] for r, keep, _ in calls[k]])  # all real uses
                g_hat = sum(
                    _out_rows(modules[k], out.grad.detach())[keep].sum(0)
                    for _, keep, out in calls[k]
                )
                sums[k][2] = sums[k][2] + w * torch.outer(g_hat, g_hat)
                if t == 0 and rows.shape[0] > 0:  # inputs do not depend on the label
                    a_bar = rows.mean(0)
                    sums[k][0] = sums[k][0] + torch.outer(a_bar, a_bar)
                    sums[k][1] = sums[k][1] + 1
    model.zero_grad(set_to_none=True)
    out = {}
    for k in names:
        if isinstance(modules[k], nn.Embedding):
            out[k] = expand[k]
            continue
        aa, n_a, gg = sums[k]
        out[k] = (aa / n_a, gg / int(labels.shape[0]))
    return out
