"""Training a ranker on one task: AdamW on cross-entropy plus a consolidation penalty.

``train_task`` minimizes ``mean_n CE(logits_n, gold_n) + R(θ)``. One step reads top to
bottom (``_Step.__call__``): task loss → backward → the penalty's closed-form gradient
(``penalty.add_grad_``, after unscaling under mixed precision) → clipping → AdamW, so
``R`` enters as it is. A penalty with an ``after_task_step()`` method (a forgetting
budget's dual step, ``penalties.budget``) has it called after every step on the task's
own batches that the optimizer applied: not after replay steps, nor after steps the
gradient scaler skipped for infinite or NaN gradients. With ``refresh`` each such step is
preceded by refresh learning's unlearning move up the same objective
(``training.refresh``, eq. R1), and the step is taken from the moved weights. After every
epoch the dev set is evaluated; the best epoch's weights are restored at the end (``_BestEpoch``).

Learning rate: constant, or ``linear`` (the usual schedule for fine-tuning pretrained
encoders, Devlin et al. 2019): a linear warm-up from 0 over the first ``warmup`` share of
the training steps, then a linear decay to 0 at the last step. It scales every parameter
group's own rate (so discriminative rates keep their ratios); replay steps use the rate of
the training step they follow.

Determinism: the batch order and the replay order come from a local
``torch.Generator``; dropout masks need torch's global generator, which is seeded inside
``torch.random.fork_rng`` so that the caller's random state is left as it was. On the CPU
two runs with one seed give identical weights. Distributed: when ``torch.distributed``
is initialized, the model is wrapped in DistributedDataParallel and every rank takes its
share of each global batch (rows ``rank::world``), so with batch sizes divisible by the
world size one step equals a single-process step on the whole batch up to float rounding
(DDP averages the ranks' mean-loss gradients).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from kfacel._progress import with_progress
from kfacel.data.collate import sample_candidates
from kfacel.linking.evaluate import evaluate
from kfacel.models.precision import (
    PRECISIONS,
    autocast,
    needs_scaler,
    penalty_autocast,
)
from kfacel.penalties.base import Penalty
from kfacel.training.refresh import unlearn_
from kfacel.training.stability import freeze_lowest, reinit_top_
from kfacel.types import Batch

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "linear")
"""Learning-rate schedules of ``train_task``."""

OPTIMIZERS = ("adamw", "sgd")
"""``adamw`` (the default) or ``sgd`` (with momentum 0.9): the optimizer of each step."""

T = TypeVar("T")


@dataclass(frozen=True)
class TrainSettings:
    """How to train on one task; every value is checked once, here.

    Attributes:
        epochs: passes over the training queries.
        lr: AdamW learning rate (default of groups without their own ``lr``).
        batch_size: queries per batch (used where batches are made).
        schedule: ``constant`` or ``linear`` (``lr_factor``).
        warmup: share of the training steps of linear warm-up.
        clip: max gradient norm (None: no clipping).
        clip_task_only: clip the task gradient before the penalty's is added (default:
            clip their sum).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9). Adam divides each parameter's
            step by its gradient's running scale, penalty included; SGD does not.
        weight_decay: AdamW decoupled weight decay (0: pure penalty training).
        seed: dropout masks, batch order and replay order.
        device: ``cpu`` or ``cuda[:i]``.
        precision: ``auto`` (float16 mixed precision on CUDA; on the CPU bfloat16
            for a ranker that asks for it on a CPU with bfloat16 units, else
            float32), ``float32`` or ``bfloat16`` (autocast; ``models.precision``).
        max_train: use only the first ``max_train`` training queries (None: all).
        train_candidates: train each step on the gold and ``train_candidates − 1``
            of each query's other candidates, drawn anew (``sample_candidates``);
            None: all of them. Evaluation always ranks every candidate.
        refresh: refresh learning (``training.refresh``, eq. R1): before each step
            on the task's own batches, unlearn by this share of a step up the
            objective, then take the step from there; 0: off. Twice the step's cost.
        refresh_temperature: the unlearning step's Langevin noise (``T`` of R1).
        freeze_layers: the lowest layers (embeddings, then transformer blocks) take
            no gradient during this task (``training.stability``); 0: none.
        reinit_top: the top transformer blocks are re-initialized before training
            (``training.stability``); 0: none.
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    schedule: str = "constant"
    warmup: float = 0.0
    clip: float | None = 1.0
    clip_task_only: bool = False
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    max_train: int | None = None
    train_candidates: int | None = None
    precision: str = "auto"
    refresh: float = 0.0
    refresh_temperature: float = 0.0
    freeze_layers: int = 0
    reinit_top: int = 0

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first setting out of its range."""
        _require(self.epochs >= 1, "epochs", self.epochs, "a positive whole number")
        _require(_positive(self.lr), "lr", self.lr, "a positive finite number")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "positive")
        _require(self.schedule in SCHEDULES, "schedule", self.schedule, SCHEDULES)
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, OPTIMIZERS)
        _require(0.0 <= self.warmup < 1.0, "warmup", self.warmup, "in [0, 1)")
        _require(
            self.clip is None or _positive(self.clip), "clip", self.clip, "positive"
        )
        _require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            self.weight_decay,
            "non-negative",
        )
        _require(
            self.max_train is None or self.max_train >= 1,
            "max_train",
            self.max_train,
            "a positive number of queries",
        )
        _require(
            self.train_candidates is None or self.train_candidates >= 2,
            "train_candidates",
            self.train_candidates,
            "at least 2 (the gold and one other)",
        )
        _require(self.precision in PRECISIONS, "precision", self.precision, PRECISIONS)
        for name in ("refresh", "refresh_temperature"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, value, "non-negative")
        for name in ("freeze_layers", "reinit_top"):
            value = getattr(self, name)
            _require(value >= 0, name, value, "a non-negative number of layers")
        check_device(self.device)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what a model directory records as ``training``)."""
        return asdict(self)


@dataclass(frozen=True)
class Replay(Generic[T]):
    """Experience replay (de Masson d'Autume et al. 2019), a reference method.

    After every ``every`` training steps, ``n`` extra steps are taken on ``items``
    (earlier tasks' queries or batches, in a seeded shuffled cycle). It needs the old
    data that the penalties do without.
    """

    items: Sequence[T]
    every: int = 1
    n: int = 1

    def __post_init__(self) -> None:
        """Raise ``ValueError`` for a non-positive ``every`` or ``n``."""
        _require(self.every >= 1, "replay every", self.every, "positive")
        _require(self.n >= 1, "replay batches", self.n, "positive")


@dataclass(frozen=True)
class EpochLog:
    """One epoch: mean losses, dev accuracy (NaN without dev), speed, last step's lr.

    ``lr`` is the first parameter group's learning rate at the epoch's last step;
    ``constraints`` is the penalty's ``status()`` at the epoch's end where it has one
    (a forgetting budget: λ_t, the predicted rise and the budget per old task).
    """

    epoch: int
    loss: float
    penalty: float
    dev_accuracy: float
    seconds: float
    queries_per_s: float
    lr: float
    constraints: dict[str, Any] = field(default_factory=dict)


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
            "epochs": [asdict(e) for e in self.epochs],
        }


def lr_factor(step: int, total: int, *, schedule: str, warmup: float = 0.0) -> float:
    """The multiplier of the base learning rate for the 0-based training ``step``.

    ``constant``: 1. ``linear``: ``(step + 1) / w`` for the first ``w = ⌈warmup·total⌉``
    steps, then ``(total − step) / (total − w)``, reaching ``1/(total − w)`` at the last
    step (a rate of exactly 0 would waste it).

    >>> lr_factor(0, 4, schedule="linear", warmup=0.5)
    0.5

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


def check_device(device: str) -> None:
    """Raise ``ValueError`` for a device torch cannot use here (e.g. CUDA on a CPU build)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a torch device (cpu, cuda[:i])"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch build sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: kfacel trains on cpu or cuda")


def train_task(
    model: nn.Module,
    train_batches: Iterable[Batch],
    settings: TrainSettings,
    *,
    penalty: Penalty | None = None,
    dev_batches: Iterable[Batch] | None = None,
    lr_groups: Sequence[dict[str, Any]] | None = None,
    replay: Replay[Batch] | None = None,
    progress: bool = False,
) -> TrainLog:
    """Train ``model`` in place on one task; the best dev epoch's weights are kept.

    Args:
        model: a ranker, ``forward(batch) -> logits [N, C]``.
        train_batches: the training batches (global batches under DDP).
        settings: epochs, learning rate, schedule, clipping, seed, device.
        penalty: consolidation penalty ``R(θ)``; None for plain training.
        dev_batches: batches to choose the best epoch on; None keeps the last.
        lr_groups: optimizer parameter groups (``{"params": [...], "lr": ...}``),
            e.g. discriminative learning rates; None: one group of all parameters.
        replay: batches of earlier tasks to replay (needs old data).
        progress: show progress bars.

    Returns:
        The ``TrainLog``.

    Raises:
        ValueError: without training batches.
        FloatingPointError: when the loss or the penalty becomes NaN or infinite.
    """
    batches = list(train_batches)
    if not batches:
        raise ValueError("no training batches")
    dev = list(dev_batches) if dev_batches is not None else []
    device = torch.device(settings.device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(
            settings.seed
        )  # dropout masks; fork_rng restores the caller's
        if settings.reinit_top:
            reinit_top_(model, settings.reinit_top)
        with freeze_lowest(model, settings.freeze_layers):
            best, epochs = _train_epochs(
                model, batches, dev, settings, penalty, lr_groups, replay, progress
            )
    best.restore(model)
    model.eval()
    return TrainLog(
        epochs=epochs,
        best_epoch=best.epoch,
        best_dev_accuracy=best.accuracy if dev else math.nan,
        queries_per_s=_throughput(epochs),
    )


def _train_epochs(
    model: nn.Module,
    batches: list[Batch],
    dev: list[Batch],
    settings: TrainSettings,
    penalty: Penalty | None,
    lr_groups: Sequence[dict[str, Any]] | None,
    replay: Replay[Batch] | None,
    progress: bool,
) -> tuple[_BestEpoch, list[EpochLog]]:
    """The epochs of ``train_task`` (global RNG already seeded); the best and the logs."""
    device = torch.device(settings.device)
    order_rng = torch.Generator().manual_seed(settings.seed)
    step = _Step.build(model, settings, penalty, lr_groups, len(batches))
    replays = _cycle(replay.items, order_rng) if replay else None
    sample = _candidate_sampler(settings)
    best, epochs = _BestEpoch(), []
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(batches), generator=order_rng).tolist()
        show = progress and step.rank == 0
        steps = with_progress(order, enabled=show, desc=f"epoch {epoch}")
        chosen = (sample(batches[i]) for i in steps)
        e = _train_epoch(step, chosen, epoch, replays, replay)
        if dev:
            accuracy = evaluate(
                model, dev, device=device, precision=settings.precision
            ).accuracy
            e = replace(e, dev_accuracy=accuracy)
        status = getattr(penalty, "status", None)  # a budget's λ_t and rises
        if status is not None:
            e = replace(e, constraints=status())
        _log_epoch(e)
        epochs.append(e)
        best.offer(e, model, last=epoch == settings.epochs)
    return best, epochs


@dataclass
class _Step:
    """One optimizer step: loss → backward → penalty gradient → clip → optimizer.

    With ``clip_task_only`` the clipping comes before the penalty's gradient.
    """

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    penalty: Penalty | None
    clip: float | None
    clip_task_only: bool
    precision: str
    device: torch.device
    rank: int = 0
    world: int = 1
    taken: int = 0  # steps taken so far
    refresh: float = 0.0
    refresh_temperature: float = 0.0
    noise: torch.Generator | None = None  # refresh learning's Langevin noise

    @classmethod
    def build(
        cls,
        model: nn.Module,
        s: TrainSettings,
        penalty: Penalty | None,
        lr_groups: Sequence[dict[str, Any]] | None,
        steps_per_epoch: int,
    ) -> _Step:
        """Optimizer, schedule, gradient scaler and (under DDP) the wrapped model."""
        device = torch.device(s.device)
        model.to(device)
        rank, world = _dist_info()
        net: nn.Module = model
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        groups = [  # frozen parameters stay out, whatever gradient a penalty adds
            {**g, "params": [p for p in g["params"] if p.requires_grad]}
            for g in (
                lr_groups if lr_groups is not None else [{"params": model.parameters()}]
            )
        ]
        groups = [g for g in groups if g["params"]]
        opt: torch.optim.Optimizer
        if s.optimizer == "sgd":
            opt = torch.optim.SGD(
                groups, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay
            )
        else:
            # fused: one kernel over all parameters; the default per-tensor loop took
            # 178 of a 500 ms step of the transformer ranker on one CPU thread
            opt = torch.optim.AdamW(
                groups,
                lr=s.lr,
                weight_decay=s.weight_decay,
                fused=device.type in ("cpu", "cuda"),
            )
        total = s.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: lr_factor(i, total, schedule=s.schedule, warmup=s.warmup)
        )
        scaler = torch.amp.GradScaler(
            device.type, enabled=needs_scaler(device, s.precision)
        )
        noise = torch.Generator().manual_seed(s.seed) if s.refresh > 0 else None
        return cls(
            model, net, opt, sched, scaler, penalty, s.clip, s.clip_task_only,
            s.precision, device, rank, world, 0, s.refresh, s.refresh_temperature,
            noise,
        )  # fmt: skip

    def __call__(
        self, batch: Batch, where: str, *, replay: bool = False
    ) -> tuple[float, float, int]:
        """Take the step on this rank's share of ``batch``: (loss, penalty, queries).

        After a step on the task's own batch (not ``replay``) that was applied, the
        penalty's ``after_task_step`` runs where it has one (module doc).
        """
        batch = _shard(batch, self.rank, self.world).to(self.device, non_blocking=True)
        cast = autocast(self.device, self.precision, self.model)
        if self.refresh > 0 and not replay:
            self._unlearn(batch, cast)
        self.opt.zero_grad(set_to_none=True)
        loss = _task_loss(self.net, batch, cast)
        _finite(
            "loss",
            loss.item(),
            where,
            "lower the learning rate (or λ) or check the data",
        )
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        if self.clip is not None and self.clip_task_only:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        pen = 0.0
        if self.penalty is not None:
            with penalty_autocast(self.device, self.precision, self.model):
                pen = self.penalty.add_grad_(self.model).item()
        _finite("penalty", pen, where, "lower λ" if self.taken else _AT_THE_START)
        if self.clip is not None and not self.clip_task_only:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        scale = self.scaler.get_scale()
        self.scaler.step(self.opt)
        self.scaler.update()
        applied = self.scaler.get_scale() >= scale  # a skipped step lowers the scale
        after = getattr(self.penalty, "after_task_step", None)
        if applied and not replay and after is not None:
            after()
        self.taken += 1
        return loss.item(), pen, len(batch)

    def _unlearn(self, batch: Batch, cast: torch.autocast) -> None:
        """Refresh learning's unlearning move (eq. R1) on the objective's gradient."""
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(_task_loss(self.net, batch, cast)).backward()
        if self.scaler.is_enabled():
            inv = 1.0 / self.scaler.get_scale()
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(inv)
        if self.penalty is not None:
            with penalty_autocast(self.device, self.precision, self.model):
                self.penalty.add_grad_(self.model)
        unlearn_(
            self.opt, self.refresh,
            temperature=self.refresh_temperature, generator=self.noise,
        )  # fmt: skip


_AT_THE_START = (
    "it is so before any step, at the weights training starts from: a consolidation "
    "state holds a value out of range (damaged), or λ is too large"
)


def _task_loss(net: nn.Module, batch: Batch, cast: torch.autocast) -> torch.Tensor:
    """Mean cross-entropy of the batch's gold candidates (the forward under ``cast``)."""
    with cast:
        logits = net(batch)  # [N, C]
    return F.cross_entropy(logits.float(), batch.labels)


def _train_epoch(
    step: _Step,
    batches: Iterable[Batch],
    epoch: int,
    replays: Iterator[Batch] | None,
    replay: Replay[Batch] | None,
) -> EpochLog:
    """One pass in the given order, with replay steps; dev accuracy left NaN."""
    step.model.train()
    start = time.perf_counter()
    sums = [0.0, 0.0, 0.0]  # loss·n, penalty·n, n over this rank's queries
    for i, batch in enumerate(batches, start=1):
        loss, pen, n = step(batch, f"epoch {epoch}, batch {i}")
        sums = [sums[0] + loss * n, sums[1] + pen * n, sums[2] + n]
        if replays is not None and replay is not None and i % replay.every == 0:
            for _ in range(replay.n):
                where = f"epoch {epoch}, replay after batch {i}"
                step(next(replays), where, replay=True)
        lr = step.opt.param_groups[0]["lr"]
        step.sched.step()
    seconds = time.perf_counter() - start
    loss_n, pen_n, n_all = _all_reduce(sums, step.world, step.device)
    return EpochLog(
        epoch=epoch,
        loss=(loss_n + pen_n) / max(n_all, 1),
        penalty=pen_n / max(n_all, 1),
        dev_accuracy=math.nan,
        seconds=seconds,
        queries_per_s=n_all / seconds if seconds > 0 else 0.0,
        lr=lr,
    )


def _candidate_sampler(settings: TrainSettings) -> Callable[[Batch], Batch]:
    """Each batch as trained on: all its candidates, or a seeded sample of them."""
    k = settings.train_candidates
    if k is None:
        return lambda batch: batch
    rng = torch.Generator().manual_seed(settings.seed)
    return lambda batch: sample_candidates(batch, k, rng)


class _BestEpoch:
    """The epoch with the highest dev accuracy, and a copy of its weights.

    Without dev (NaN accuracies) every epoch is offered as best, so the last stays. The
    last epoch's weights are the model's own and are not copied.
    """

    def __init__(self) -> None:
        self.epoch, self.accuracy = 0, -math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, e: EpochLog, model: nn.Module, *, last: bool) -> None:
        """Keep ``e`` (and a copy of the weights unless ``last``) when it is better."""
        if math.isnan(e.dev_accuracy) or e.dev_accuracy > self.accuracy:
            self.epoch, self.accuracy = e.epoch, e.dev_accuracy
            self.state = None if last else _clone_state(model)

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (a no-op when it was the last)."""
        if self.state is not None:
            model.load_state_dict(self.state)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _log_epoch(e: EpochLog) -> None:
    log.info(
        "epoch %d: loss %.4f, penalty %.4g, dev accuracy %.4f, %.0f queries/s",
        e.epoch,
        e.loss,
        e.penalty,
        e.dev_accuracy,
        e.queries_per_s,
    )


def _throughput(epochs: Sequence[EpochLog]) -> float:
    """Queries per second over all epochs (dev evaluation excluded)."""
    seconds = sum(e.seconds for e in epochs)
    queries = sum(e.queries_per_s * e.seconds for e in epochs)
    return queries / seconds if seconds > 0 else 0.0


def _finite(what: str, value: float, where: str, hint: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is {value} at {where}: {hint}")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _require(ok: bool, name: str, value: Any, want: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


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
    return list(t.tolist())


def _cycle(items: Sequence[T], rng: torch.Generator) -> Iterator[T]:
    """Endless seeded reshuffled passes over ``items``."""
    while True:
        for i in torch.randperm(len(items), generator=rng).tolist():
            yield items[i]
