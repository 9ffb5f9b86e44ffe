"""Training a ranker on one task: AdamW on cross-entropy plus a consolidation penalty.

``train_task`` minimizes ``mean_n CE(logits_n, gold_n) + R(θ)``: the penalty's gradient
is added in closed form by ``penalty.add_grad_`` right after ``loss.backward()`` (after
unscaling under mixed precision, before clipping), so ``R`` enters as it is. After
every epoch the dev set is evaluated; the best epoch's weights are restored at the end.

Learning rate: constant, or ``linear`` (the usual schedule for fine-tuning pretrained
encoders, Devlin et al. 2019): a linear warm-up from 0 over the first ``warmup`` share of
the training steps, then a linear decay to 0 at the last step. It scales every parameter
group's own rate (so discriminative rates keep their ratios); replay steps use the rate of
the training step they follow.

Determinism: on the CPU with a seed, two runs give identical weights (the seed fixes
initial dropout masks and the per-epoch batch order). Distributed: when
``torch.distributed`` is initialized, the model is wrapped in DistributedDataParallel
and every rank takes its share of each global batch (rows ``rank::world``), so with
batch sizes divisible by the world size one step equals a single-process step on the
whole batch up to float rounding (DDP averages the ranks' mean-loss gradients).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kfacel._progress import with_progress
from kfacel.penalties.base import Penalty
from kfacel.training.evaluate import evaluate
from kfacel.types import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochLog:
    """One epoch: mean losses, dev accuracy (NaN without dev), speed, last step's lr.

    ``lr`` is the first parameter group's learning rate at the epoch's last step.
    """

    epoch: int
    loss: float
    penalty: float
    dev_accuracy: float
    seconds: float
    queries_per_s: float
    lr: float


SCHEDULES = ("constant", "linear")
"""Learning-rate schedules of ``train_task``."""


def lr_factor(step: int, total: int, *, schedule: str, warmup: float = 0.0) -> float:
    """The multiplier of the base learning rate for the 0-based training ``step``.

    ``constant``: 1. ``linear``: ``(step + 1) / w`` for the first ``w = ⌈warmup·total⌉``
    steps, then ``(total − step) / (total − w)``, reaching ``1/(total − w)`` at the last
    step (a rate of exactly 0 would waste it).

    Raises:
        ValueError: for an unknown schedule or a warm-up share outside [0, 1).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a share of the steps in [0, 1), got {warmup}")
    if schedule == "constant":
        return 1.0
    w = math.ceil(warmup * total)
    if step < w:
        return (step + 1) / w
    return max(total - step, 1) / max(total - w, 1)


@dataclass(frozen=True)
class TrainLog:
    """What ``train_task`` did, as plain numbers.

    Attributes:
        epochs: one entry per epoch.
        best_epoch: the epoch whose weights were kept (1-based; the last without dev).
        best_dev_accuracy: its dev accuracy (NaN without dev).
        queries_per_s: training throughput over all epochs (dev evaluation excluded).
    """

    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_dev_accuracy: float = float("nan")
    queries_per_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "best_epoch": self.best_epoch,
            "best_dev_accuracy": self.best_dev_accuracy,
            "queries_per_s": self.queries_per_s,
            "epochs": [e.__dict__ for e in self.epochs],
        }


def train_task(
    model: nn.Module,
    train_batches: Iterable[Batch],
    *,
    penalty: Penalty | None = None,
    epochs: int,
    lr: float,
    dev_batches: Iterable[Batch] | None = None,
    clip: float | None = 1.0,
    schedule: str = "constant",
    warmup: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    progress: bool = False,
    lr_groups: Sequence[dict[str, Any]] | None = None,
    weight_decay: float = 0.0,
    replay_batches: Sequence[Batch] | None = None,
    replay_every: int = 1,
    replay_n: int = 1,
) -> TrainLog:
    """Train ``model`` in place on one task; the best dev epoch's weights are kept.

    Args:
        model: a ranker, ``forward(batch) -> logits [N, C]``.
        train_batches: the training batches (global batches under DDP).
        penalty: consolidation penalty ``R(θ)``; None for plain training.
        epochs: passes over the training batches.
        lr: AdamW learning rate (default of groups without their own ``lr``).
        dev_batches: batches to choose the best epoch on; None keeps the last.
        clip: max gradient norm (None: no clipping).
        schedule: learning-rate schedule, ``constant`` or ``linear`` (``lr_factor``).
        warmup: share of the training steps of linear warm-up (``linear`` only).
        seed: seeds initialization-independent randomness (dropout, batch order).
        device: where to train.
        amp: float16 autocast and gradient scaling (CUDA only; ignored on CPU).
        progress: show progress bars.
        lr_groups: optimizer parameter groups (``{"params": [...], "lr": ...}``),
            e.g. discriminative learning rates; None: one group of all parameters.
        weight_decay: AdamW decoupled weight decay (0: pure penalty training).
        replay_batches: experience replay (de Masson d'Autume et al. 2019): batches of
            earlier tasks; after every ``replay_every`` training steps, ``replay_n``
            extra steps are taken on them (in a seeded shuffled cycle). A reference
            method: it needs the old data that the penalties do without.
        replay_every: training steps between replays (m).
        replay_n: replay steps each time (n).

    Returns:
        The ``TrainLog``.

    Raises:
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    batches = list(train_batches)
    if not batches:
        raise ValueError("no training batches")
    dev = list(dev_batches) if dev_batches is not None else None
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    torch.manual_seed(seed)
    order_rng = torch.Generator().manual_seed(seed)
    model.to(device)
    rank, world = _dist_info()
    net: nn.Module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    groups = (
        lr_groups if lr_groups is not None else [{"params": list(model.parameters())}]
    )
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    total_steps = epochs * len(batches)
    lr_factor(0, total_steps, schedule=schedule, warmup=warmup)  # check the arguments
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, schedule=schedule, warmup=warmup)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if replay_every < 1 or replay_n < 1:
        raise ValueError("replay_every and replay_n must be positive")
    replay = _cycle(list(replay_batches), order_rng) if replay_batches else None
    done = 0

    def one_step(batch: Batch, epoch: int, step: int) -> tuple[float, float, int]:
        """Forward, loss, backward, penalty gradient, clipping, AdamW step."""
        batch = _shard(batch, rank, world).to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            logits = net(batch)  # [N, C]
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            loss = F.cross_entropy(logits, batch.labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch}, batch {step}: "
                "lower the learning rate (or λ) or check the data"
            )
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        pen = penalty.add_grad_(model).item() if penalty is not None else 0.0
        if not math.isfinite(pen):
            raise FloatingPointError(
                f"penalty is {pen} at epoch {epoch}, batch {step}: lower λ"
            )
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        return loss.item(), pen, len(batch)  # this rank's share of the batch

    epoch_logs: list[EpochLog] = []
    best_acc, best_epoch, best_state = -math.inf, 0, None
    train_seconds, seen = 0.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        sum_loss, sum_pen, n_queries, last_lr = 0.0, 0.0, 0, float("nan")
        order = torch.randperm(len(batches), generator=order_rng).tolist()
        for step in with_progress(
            order, enabled=progress and rank == 0, desc=f"epoch {epoch}"
        ):
            loss, pen, n = one_step(batches[step], epoch, step)
            sum_loss += loss * n
            sum_pen += pen * n
            n_queries += n
            done += 1
            if replay and done % replay_every == 0:
                for _ in range(replay_n):
                    one_step(next(replay), epoch, step)
            last_lr = opt.param_groups[0]["lr"]
            sched.step()
        seconds = time.perf_counter() - start
        totals = _all_reduce([sum_loss, sum_pen, float(n_queries)], world, device)
        sum_loss, sum_pen, n_all = totals
        train_seconds += seconds
        seen += int(n_all)
        dev_acc = float("nan")
        if dev:
            dev_acc = evaluate(model, dev, device=device).accuracy
        epoch_logs.append(
            EpochLog(
                epoch=epoch,
                loss=(sum_loss + sum_pen) / max(n_all, 1),
                penalty=sum_pen / max(n_all, 1),
                dev_accuracy=dev_acc,
                seconds=seconds,
                queries_per_s=n_all / seconds if seconds > 0 else 0.0,
                lr=last_lr,
            )
        )
        log.info(
            "epoch %d: loss %.4f, penalty %.4g, dev accuracy %.4f, %.0f queries/s",
            epoch,
            epoch_logs[-1].loss,
            epoch_logs[-1].penalty,
            dev_acc,
            epoch_logs[-1].queries_per_s,
        )
        if not dev or dev_acc > best_acc:
            best_acc, best_epoch = dev_acc, epoch
            if dev and epoch < epochs:
                best_state = {
                    k: v.detach().clone() for k, v in model.state_dict().items()
                }
            else:
                best_state = None
    if best_state is not None and best_epoch != epochs:
        model.load_state_dict(best_state)
    model.eval()
    return TrainLog(
        epochs=epoch_logs,
        best_epoch=best_epoch,
        best_dev_accuracy=best_acc if dev else float("nan"),
        queries_per_s=seen / train_seconds if train_seconds > 0 else 0.0,
    )


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(batch: Batch, rank: int, world: int) -> Batch:
    """Rows ``rank::world`` of every tensor of the batch."""
    if world == 1:
        return batch
    if len(batch) < world:
        raise ValueError(f"a batch of {len(batch)} cannot be split over {world} ranks")
    moved = {
        name: getattr(batch, name)[rank::world]
        for name in batch.__dataclass_fields__
        if getattr(batch, name) is not None
    }
    return replace(batch, **moved)


def _all_reduce(values: list[float], world: int, device: torch.device) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _cycle(batches: list[Batch], rng: torch.Generator) -> Iterator[Batch]:
    """Endless seeded reshuffled passes over ``batches``."""
    while True:
        for i in torch.randperm(len(batches), generator=rng).tolist():
            yield batches[i]
