"""Which modules of a model get Kronecker factors, a diagonal, or nothing."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kfacel.curvature.layers import (
    KRONECKER_KINDS,
    LayerKind,
    layer_kind,
    unsupported_reason,
)


@dataclass(frozen=True)
class Coverage:
    """The model's trainable modules sorted by what the estimators can do with them.

    Attributes:
        kronecker: module name to (module, kind) for Linear, Conv1d and Embedding.
        diagonal_only: LayerNorm modules (per-example gradients, no Kronecker factors).
        unsupported: module name to the reason kfacel has no adapter for it.
    """

    kronecker: dict[str, tuple[nn.Module, LayerKind]]
    diagonal_only: dict[str, tuple[nn.Module, LayerKind]]
    unsupported: dict[str, str]
    unsupported_params: tuple[str, ...]


def coverage(model: nn.Module) -> Coverage:
    """Sort every module that owns a trainable parameter.

    Raises:
        ValueError: a trainable parameter is owned by several modules (tied weights,
            e.g. a masked-LM decoder tied to the word embeddings), naming them.
    """
    _refuse_tied(model)
    kron: dict[str, tuple[nn.Module, LayerKind]] = {}
    diag: dict[str, tuple[nn.Module, LayerKind]] = {}
    unsupported: dict[str, str] = {}
    bad_params: list[str] = []
    for name, module in model.named_modules():
        own = [
            (n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad
        ]
        if not own:
            continue
        kind = layer_kind(module)
        if kind in KRONECKER_KINDS:
            kron[name] = (module, kind)
        elif kind is LayerKind.LAYERNORM:
            diag[name] = (module, kind)
        else:
            unsupported[name or "<root>"] = unsupported_reason(module)
            bad_params += [f"{name}.{n}" if name else n for n, _ in own]
    return Coverage(kron, diag, unsupported, tuple(bad_params))


def _refuse_tied(model: nn.Module) -> None:
    """Refuse a trainable parameter that several modules own, naming each owner."""
    owners: dict[int, dict[int, str]] = {}  # parameter -> owning module -> name
    for name, module in model.named_modules():  # a module shared by names is one layer
        for attr, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                owners.setdefault(id(p), {})[id(module)] = param_name(name, attr)
    tied = [sorted(names.values()) for names in owners.values() if len(names) > 1]
    if tied:
        listed = "; ".join(" = ".join(names) for names in tied)
        raise ValueError(
            f"tied weights: {listed} are one parameter used by several layers, which "
            "K-FAC and the per-example diagonal treat as separate layers; untie them "
            "(Hugging Face: config.tie_word_embeddings=False) or freeze the parameter "
            "(requires_grad_(False))"
        )


def call_model(model: nn.Module, inputs: Any) -> Tensor:
    """Logits of one batch: ``model(**inputs)`` for a mapping, else ``model(inputs)``.

    A mapping batch is passed as keyword arguments, as Hugging Face models expect; an
    output with ``.logits`` (a ``ModelOutput``) gives those logits.

    Raises:
        TypeError: the output is neither a tensor nor has tensor ``.logits``.
    """
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the model returned {type(out).__name__}; curvature needs logits: a "
            "tensor or an output with a .logits tensor"
        )
    return logits


def param_name(module_name: str, attr: str) -> str:
    """Full parameter name of ``module.attr``."""
    return f"{module_name}.{attr}" if module_name else attr


def warn_unsupported(cov: Coverage, what: str) -> None:
    """Report, by name, the modules that get no curvature."""
    if cov.unsupported:
        listed = "; ".join(f"{n} ({r})" for n, r in cov.unsupported.items())
        warnings.warn(f"{what}: no curvature for {listed}", stacklevel=3)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """Floating dtype (at least float32) and device of the model's parameters."""
    p = next(model.parameters())
    dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
    return dtype, p.device


def to_device(inputs: Any, device: torch.device) -> Any:
    """Move a tensor, a mapping of tensors or an object with ``.to`` to ``device``."""
    if isinstance(inputs, Tensor) or hasattr(inputs, "to"):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return inputs


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def unpack(batch: Any) -> tuple[Any, Tensor]:
    """``(inputs, labels)`` from a batch item."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError("batches must yield (inputs, labels) pairs")


def all_reduce_(tensors: Iterable[Tensor | None]) -> None:
    """Sum statistics across processes when ``torch.distributed`` is initialized (K5)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in tensors:
        if t is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
