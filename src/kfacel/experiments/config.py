"""Experiment configuration: frozen dataclasses loaded from TOML (docs/contributing.md §2).

A config file has top-level keys ``name``, ``methods``, ``lam_grid``, ``tiers``,
``seeds``, ``output_dir``, an array of ``[[tasks]]`` tables (``name``, ``path``) and the
tables ``[model]``, ``[train]``, ``[curvature]`` and ``[penalty]``. ``[model]`` holds
``name`` (a registered ranker: ``cnn`` or ``transformer``) and that ranker's own
settings, checked against its config dataclass. Every other key is one field below;
an unknown key is an error naming the key and the file. Relative paths (tasks, output
directory, checkpoints) are kept as written and resolved against the working directory
by the runner.

Overrides use dotted paths, ``train.lr=3e-4``: the value is read as a TOML value where
it parses as one (``1e3``, ``true``, ``[1, 2]``, ``"x"``) and as a bare string
otherwise, then converted to the field's type (a comma-separated list is accepted for
tuple fields), and applied with ``dataclasses.replace``.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from kfacel.experiments.metrics import TIER3_FACTORS
from kfacel.penalties.strength import DEFAULT_BUDGET_RATE, MAX_LAM
from kfacel.training.trainer import TrainSettings
from kfacel.types import FisherKind, KFACApprox


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and the file."""


class Method(StrEnum):
    """What protects the old tasks while training the next one."""

    NONE = "none"  # plain fine-tuning
    L2 = "l2"  # L2 to the old weights
    EWC = "ewc"  # diagonal Fisher
    KFAC = "kfac"  # Kronecker-factored Fisher (the paper's KFC)
    LRC = "lrc"  # discriminative learning rates (ULMFiT)
    REPLAY = "replay"  # experience replay: needs old data, a reference only
    KFAC_BUDGET = "kfac-budget"  # KFC with a forgetting budget ε (λ by dual ascent)
    EWC_BUDGET = "ewc-budget"  # diagonal EWC with a forgetting budget ε
    OLORA = "olora"  # a fresh LoRA adapter orthogonal to the start's (LoRA rankers)
    ILORA = "ilora"  # I-LoRA: replay with a slow learner; needs old data, a reference


class Uncovered(StrEnum):
    """What K-FAC does with parameters outside its layers (LayerNorm)."""

    IGNORE = "ignore"  # the paper
    DIAGONAL = "diagonal"  # beyond the paper: a diagonal Fisher for them


@dataclass(frozen=True)
class TaskSpec:
    """One task: a display name and a task directory (JSONL splits)."""

    name: str
    path: str


@dataclass(frozen=True)
class ModelConfig:
    """The ranker: a registry name and its own settings (``build_model(name, **s)``)."""

    name: str = "cnn"
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Training of one task (``train_task``) and the LRC and replay baselines."""

    epochs: int = 10
    lr: float = 1e-3
    schedule: Literal["constant", "linear"] = "constant"  # trainer.lr_factor
    warmup: float = 0.0  # share of the steps of linear warm-up
    batch_size: int = 32
    eval_batch_size: int = 128
    max_train_examples: int | None = None
    train_candidates: int | None = None  # TrainSettings.train_candidates
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # models.precision
    device: str = "cpu"
    lrc_gamma: float = 0.5  # LRC: η_ℓ = η_{ℓ+1}·γ from the top layer down
    freeze_layers: int = 0  # every task: the lowest layers frozen (training.stability)
    reinit_top: int = 0  # every task: the top blocks re-initialized first
    replay_every: int = 10  # replay: n old batches every m new ones
    replay_batches: int = 1
    # training on a new task (tiers 2 and 3) only, to vary one factor at a time:
    continual_optimizer: Literal["adamw", "sgd"] = "adamw"
    continual_lr: float | None = None  # None: lr
    clip_task_only: bool = False  # clip the task gradient before the penalty's is added
    continual_refresh: float = (
        0.0  # refresh learning's unlearning share (training.refresh)
    )
    continual_refresh_temperature: float = 0.0  # its Langevin noise


@dataclass(frozen=True)
class CurvatureConfig:
    """Consolidation of a finished task (the method comes from each cell)."""

    fisher: FisherKind = FisherKind.EMPIRICAL
    max_examples: int | None = None
    uncovered: Uncovered = Uncovered.IGNORE
    damping: float = 0.0
    damping_kind: Literal["uniform", "factored"] = "uniform"  # δ I, or (P4) on factors
    approx: KFACApprox = KFACApprox.EXPAND
    split: Literal["train", "dev"] = "train"  # the queries the Fisher is estimated on
    factor_rank: int | None = None  # K-FAC factors kept at this rank (K10); None: whole

    def __post_init__(self) -> None:
        if self.factor_rank is not None and self.factor_rank < 1:
            raise ConfigError(
                f"curvature.factor_rank: must be >= 1, got {self.factor_rank}"
            )


@dataclass(frozen=True)
class PenaltyConfig:
    """The λ selection rule (metrics.select_lambda) and tier 3's search around it."""

    new_task_tolerance: float = 2.0
    budget_rate: float = (
        DEFAULT_BUDGET_RATE  # dual rate of *-budget per run (any epochs)
    )
    tier3_factors: tuple[float, ...] = TIER3_FACTORS
    tier3_mean: Literal["geometric", "arithmetic"] = "geometric"
    tier3_search_first: bool = False


@dataclass(frozen=True)
class ExperimentConfig:
    """The paper's protocol: tasks × orders × methods × λ grid, tiers 1–3."""

    name: str
    tasks: tuple[TaskSpec, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    methods: tuple[Method, ...] = (Method.NONE, Method.EWC, Method.KFAC)
    lam_grid: tuple[float, ...] = (1e1, 1e3, 1e5, 1e7, 1e9)
    budget_grid: tuple[float, ...] = ()  # ε of kfac-budget / ewc-budget (nats/query)
    tiers: tuple[int, ...] = (1, 2, 3)
    pairs: tuple[
        str, ...
    ] = ()  # tier-2 orders "A>B" to run (empty: every ordered pair)
    combined: bool = True  # tier 1's combined cell (Table 2); never with ``pairs``
    seeds: tuple[int, ...] = (0,)
    output_dir: str = "runs"
    benchmark_data: str = ""  # build a missing PUBLIC-3 task from this data directory
    benchmark_small: bool = True  # ... as `prepare benchmark --small` does

    def __post_init__(self) -> None:
        """Check values that no single field type can."""
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique, got {names}")
        if self.benchmark_data:
            from kfacel.tasks.benchmark import TASKS  # prepare benchmark's task names

            for spec in self.tasks:
                if spec.name in TASKS and Path(spec.path).name != spec.name:
                    raise ConfigError(
                        f"tasks: {spec.name} would be built as {Path(spec.path).parent}/"
                        f"{spec.name} (prepare benchmark's name), not {spec.path}"
                    )
        for tier in self.tiers:
            if tier not in (1, 2, 3):
                raise ConfigError(f"tiers: {tier} is not 1, 2 or 3")
            if len(self.tasks) < tier:
                raise ConfigError(f"tier {tier} needs {tier} tasks, got {len(names)}")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if not self.methods:
            raise ConfigError("methods: give at least one method")
        for a, b in self.ordered_pairs():
            if a not in names or b not in names or a == b:
                raise ConfigError(f"pairs: {a}>{b} is not an order of two of {names}")
        if self.pairs and 3 in self.tiers:
            raise ConfigError(
                "pairs: tier 3 needs every ordered pair; use tiers = [1, 2]"
            )
        if any(
            not (math.isfinite(lam) and 0 < lam <= MAX_LAM) for lam in self.lam_grid
        ):
            raise ConfigError(
                f"lam_grid: values must be positive and finite (≤ 1e15), got "
                f"{self.lam_grid}"
            )
        if not self.lam_grid and {2, 3} & set(self.tiers) and self._regularized():
            raise ConfigError("lam_grid: tiers 2 and 3 need at least one λ")
        if any(not (math.isfinite(e) and e > 0) for e in self.budget_grid):
            raise ConfigError(
                f"budget_grid: values must be > 0, got {self.budget_grid}"
            )
        budgeted = {Method.KFAC_BUDGET, Method.EWC_BUDGET} & set(self.methods)
        if budgeted and not self.budget_grid:
            raise ConfigError(
                f"budget_grid: methods {sorted(budgeted)} need at least one budget ε"
            )
        t = self.train
        try:  # the trainer's own checks (the device is checked where the run starts)
            TrainSettings(t.epochs, t.lr, t.batch_size, t.schedule, t.warmup,
                          max_train=t.max_train_examples,
                          train_candidates=t.train_candidates,
                          precision=t.precision, freeze_layers=t.freeze_layers,
                          reinit_top=t.reinit_top, refresh=t.continual_refresh,
                          refresh_temperature=t.continual_refresh_temperature)  # fmt: skip
        except ValueError as exc:
            name = str(exc).replace("refresh", "continual_refresh", 1)
            raise ConfigError(f"train.{name}") from None

    def ordered_pairs(self) -> list[tuple[str, str]]:
        """``pairs`` as (A, B) tuples (empty: every ordered pair is run)."""
        out = []
        for text in self.pairs:
            a, sep, b = text.partition(">")
            if not sep:
                raise ConfigError(f"pairs: {text!r} is not of the form 'A>B'")
            out.append((a.strip(), b.strip()))
        return out

    def _regularized(self) -> bool:
        return any(m in (Method.L2, Method.EWC, Method.KFAC) for m in self.methods)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (enums as strings, tuples as lists); ``from_dict``."""
        return typing.cast(dict[str, Any], _plain(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Self:
        """Build from a nested dict (a TOML document or a written ``config.json``)."""
        return typing.cast(Self, _build(cls, data, source, ""))


def load_config(
    path: str | Path, overrides: Sequence[str] = (), *, arm: str | None = None
) -> ExperimentConfig:
    """Read a TOML config, resolve one of its arms, and apply dotted overrides.

    A config may hold ``[arms.NAME]`` tables: each is a partial config merged over the
    rest of the file (tables key by key), with ``name`` suffixed ``-NAME`` unless the
    arm sets it and ``output_dir`` extended by ``/NAME``. Each arm is a whole
    experiment with a run directory of its own; ``arm_names`` lists them.

    Args:
        path: the TOML file.
        overrides: ``"section.key=value"`` strings, applied after the arm.
        arm: the arm to resolve; required when the file has arms, refused otherwise.

    Returns:
        The resolved configuration.

    Raises:
        ConfigError: for an unknown key or arm, a value of the wrong type or bad TOML.
    """
    path = Path(path)
    data = _read_toml(path)
    arms = data.pop("arms", None)
    if arms is not None or arm is not None:
        data = _merge_arm(data, arms, arm, path)
    cfg = ExperimentConfig.from_dict(data, source=str(path))
    return apply_overrides(cfg, overrides)


def arm_names(path: str | Path) -> tuple[str, ...]:
    """The arms of a config file, in file order (empty for a config without arms)."""
    path = Path(path)
    arms = _read_toml(path).get("arms", {})
    if not isinstance(arms, Mapping) or not all(
        isinstance(v, Mapping) for v in arms.values()
    ):
        raise ConfigError(f"{path}: arms must be tables [arms.NAME]")
    for name in arms:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"{path}: arm name {name!r} must be letters, digits, '-' or '_'"
            )
    return tuple(arms)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from err


def _merge_arm(
    base: dict[str, Any], arms: Any, arm: str | None, path: Path
) -> dict[str, Any]:
    """``base`` with arm ``arm``'s tables merged over it (``load_config``)."""
    names = arm_names(path)
    if not names:
        raise ConfigError(f"{path} has no arms; leave out the arm ({arm!r})")
    if arm not in names:
        wanted = "name one" if arm is None else f"{arm!r} is not one"
        raise ConfigError(f"{path} has arms {list(names)}: {wanted} of them")
    if "output_dir" in arms[arm]:
        raise ConfigError(f"{path}: arms.{arm}.output_dir: an arm runs in OUT/{arm}")
    merged = _deep_merge(base, arms[arm])
    if "name" not in arms[arm] and "name" in base:
        merged["name"] = f"{base['name']}-{arm}"
    merged["output_dir"] = f"{base.get('output_dir', 'runs')}/{arm}"
    return merged


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(
    cfg: ExperimentConfig, overrides: Sequence[str]
) -> ExperimentConfig:
    """Apply ``"a.b=value"`` overrides with ``dataclasses.replace``, in any order.

    Values checked against each other (``methods`` with budgets needs ``budget_grid``)
    may be given in either order: an override the config refuses is retried after the
    others, and its error is raised only when no order makes it acceptable.

    >>> cfg = ExperimentConfig(name="x", tasks=(TaskSpec("a", "tasks/a"),), tiers=(1,))
    >>> apply_overrides(cfg, ["train.lr=3e-4", "seeds=1,2"]).train.lr
    0.0003
    """
    pending = list(overrides)
    for item in pending:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4"
            )
    while pending:
        refused: list[tuple[str, ConfigError]] = []
        for item in pending:
            key, _, text = item.partition("=")
            try:
                path, value = key.strip().split("."), _parse_value(text.strip())
                cfg = _override(cfg, path, value, item)
            except ConfigError as exc:
                refused.append((item, exc))
        if len(refused) == len(pending):  # no order helps
            raise refused[0][1]
        pending = [item for item, _ in refused]
    return cfg


def _override(obj: Any, path: list[str], value: Any, where: str) -> Any:
    """Return ``obj`` with the field at ``path`` set to ``value``, type-converted."""
    head, rest = path[0], path[1:]
    if isinstance(obj, ModelConfig) and head != "name":
        if rest:
            raise ConfigError(f"override {where!r}: model.{head} takes no subkey")
        typed = _model_settings(
            obj.name, {head: value}, f"override {where!r}", "model."
        )
        return replace(obj, settings={**obj.settings, **typed})
    hints = _hints(type(obj))
    if head not in hints:
        raise ConfigError(
            f"override {where!r}: unknown key {head!r}; known {sorted(hints)}"
        )
    if rest:
        if not is_dataclass(hints[head]):
            raise ConfigError(f"override {where!r}: {head!r} has no subkeys")
        return replace(obj, **{head: _override(getattr(obj, head), rest, value, where)})
    if is_dataclass(hints[head]) or hints[head] == tuple[TaskSpec, ...]:
        raise ConfigError(
            f"override {where!r}: set the keys inside {head!r} one by one"
        )
    new = replace(obj, **{head: _coerce(value, hints[head], f"override {where!r}")})
    if isinstance(obj, ModelConfig):  # a new ranker: re-check the settings against it
        _model_settings(new.name, new.settings, f"override {where!r}", "model.")
    return new


def _parse_value(text: str) -> Any:
    """A TOML value where ``text`` is one, else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, data: Mapping[str, Any], source: str, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a table")
    if cls is ModelConfig:
        name = data.get("name", ModelConfig.name)
        name = _coerce(name, str, f"{source}: {prefix}name")
        settings = {k: v for k, v in data.items() if k not in ("name", "settings")}
        settings.update(data.get("settings", {}))  # the to_dict() layout
        return ModelConfig(name, _model_settings(name, settings, source, prefix))
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; known: {sorted(hints)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp, key = hints[name], f"{prefix}{name}"
        if is_dataclass(tp):
            kwargs[name] = _build(typing.cast(type, tp), value, source, f"{key}.")
        elif tp == tuple[TaskSpec, ...]:
            if not isinstance(value, list):
                raise ConfigError(f"{source}: {key} must be an array of tables")
            kwargs[name] = tuple(
                _build(TaskSpec, v, source, f"{key}[{i}].") for i, v in enumerate(value)
            )
        else:
            kwargs[name] = _coerce(value, tp, f"{source}: {key}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{source}: {prefix or 'config'} {err}") from err
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err


def _model_settings(
    name: str, settings: Mapping[str, Any], where: str, prefix: str
) -> dict[str, Any]:
    """Check ranker settings against the registry's config dataclass, typed."""
    try:
        from kfacel.models.registry import MODELS  # lazy: it imports torch
    except ImportError:  # pragma: no cover - the registry is part of the package
        return dict(settings)
    if name not in MODELS:
        raise ConfigError(
            f"{where}: {prefix}name {name!r} is not one of {sorted(MODELS)}"
        )
    hints = _hints(MODELS[name][0])
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in hints:
            raise ConfigError(
                f"{where}: unknown key '{prefix}{key}' for model {name!r}; "
                f"known: {['name', *sorted(hints)]}"
            )
        out[key] = _coerce(value, hints[key], f"{where}: {prefix}{key}")
    return out


def _hints(cls: type) -> dict[str, Any]:
    """Field name to resolved type annotation."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ``ConfigError`` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        is_none = value is None or (
            isinstance(value, str) and value.lower() in ("none", "null")
        )
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, str):
            value = [_parse_value(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(v, args[0], where) for v in value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(
                f"{where}: {value!r} is not one of {[m.value for m in tp]}"
            ) from None
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp)):
        if tp is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _plain(obj: Any) -> Any:
    """Dataclasses, enums and tuples to JSON types."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj
