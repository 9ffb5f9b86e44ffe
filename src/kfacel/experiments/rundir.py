"""A run directory's bookkeeping: its config check and its record of environments.

``record_arms`` keeps an armed config's top directory (``arms.json``); ``open_run_dir``
creates a run directory or checks that it holds a run of the same
config (keys in ``NOT_COMPARED`` may change between invocations), and appends the
invocation's ``environment`` (package versions, git commit, device, seeds, jobs, tiers,
start time) to ``env.json``: what makes a run reproducible. ``record_stage`` adds each
stage's wall time to that entry as the stage finishes. ``check_tasks`` and
``record_tasks`` keep each task's fingerprint (``task.json`` and the splits' SHA-256,
``tasks.directory.task_fingerprint``) in ``tasks.json`` when the run starts, and refuse to
resume once a task has changed: its finished cells were trained and tested on other
queries.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kfacel._io import atomic_write_json
from kfacel.experiments.config import ConfigError, ExperimentConfig
from kfacel.tasks.directory import task_fingerprint

PACKAGES = ("kfacel", "torch", "numpy", "safetensors", "transformers", "matplotlib")
NOT_COMPARED = ("tiers", "output_dir", "benchmark_data", "benchmark_small")
"""Keys that may change between invocations of one run (how a missing task is built
is not the experiment: ``tasks.json`` fingerprints what the tasks hold)."""
TASKS_FILE = "tasks.json"
"""Each task's fingerprint as the run started: file name to SHA-256, by task name."""
RETIRED: dict[str, tuple[str, ...]] = {"curvature": ("method",), "penalty": ("lam",)}
"""Keys that older configs wrote but no part of a run ever read: dropped on resume."""


def open_run_dir(run_dir: Path, cfg: ExperimentConfig, jobs: int) -> None:
    """Create the run directory, or check that it holds a run of the same config."""
    new = {k: v for k, v in cfg.to_dict().items() if k not in NOT_COMPARED}
    config_path = run_dir / "config.json"
    if config_path.is_file():
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        for section, retired in RETIRED.items():
            for key in retired:
                raw.get(section, {}).pop(key, None)
        # through the dataclasses: keys added since with their defaults compare equal
        old = ExperimentConfig.from_dict(raw, source=str(config_path)).to_dict()
        old = {k: v for k, v in old.items() if k not in NOT_COMPARED}
        if old != new:
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                f"{run_dir} holds a run of another config (differs in {keys}); "
                "choose another --out, or remove that directory"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"{run_dir} exists and is not a run directory; refusing to write"
        )
    else:
        atomic_write_json(config_path, cfg.to_dict(), sort_keys=True)
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text(encoding="utf-8")) if env_path.is_file() else {}
    sessions = [*env.get("sessions", []), environment(cfg, jobs)]
    atomic_write_json(env_path, {"sessions": sessions}, sort_keys=True)


def record_arms(top: Path, config: str | Path, arms: tuple[str, ...]) -> None:
    """Write ``TOP/arms.json`` (the config, its digest, its arms) of an armed run.

    A config may gain arms between invocations (each arm's run checks its own config);
    an arm recorded before must still be there.

    Raises:
        ConfigError: ``top`` holds arms the config lacks, or other files.
    """
    import hashlib

    digest = hashlib.sha256(Path(config).read_bytes()).hexdigest()
    record = {"config": str(config), "config_digest": digest, "arms": list(arms)}
    path = top / "arms.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if not set(old.get("arms", [])) <= set(arms):
            raise ConfigError(
                f"{top} holds the arms {old.get('arms')} of {old.get('config')}, "
                f"not {list(arms)}; choose another --out"
            )
    elif top.exists() and any(top.iterdir()):
        raise ConfigError(f"{top} exists and is not an armed run directory; refusing")
    top.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record, sort_keys=True)


def environment(cfg: ExperimentConfig, jobs: int) -> dict[str, Any]:
    """Package versions, git commit, device, seeds: what makes a run reproducible."""
    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit: str | None = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = cfg.train.device
    name = platform.processor() or platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": commit,
        "device": device,
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jobs": jobs,
        "seeds": list(cfg.seeds),
        "tiers": list(cfg.tiers),
    }


def record_stage(run_dir: Path, stage: str, seconds: float, cells_run: int) -> None:
    """Add a finished stage's wall time to this invocation's entry in ``env.json``."""
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text(encoding="utf-8"))
    session = env["sessions"][-1]
    session.setdefault("stages", []).append(
        {"stage": stage, "seconds": round(seconds, 1), "cells_run": cells_run}
    )
    atomic_write_json(env_path, env, sort_keys=True)


def check_tasks(run_dir: Path, cfg: ExperimentConfig) -> dict[str, dict[str, str]]:
    """Each config task's fingerprint, refused when it differs from the run's record.

    Reads only: a new run (or one started before fingerprints were kept) has no
    record to compare with; :func:`record_tasks` writes it.

    Raises:
        ConfigError: the record is unreadable, or a task's files changed since the
            run started (named, with the files that differ).
    """
    now = {t.name: task_fingerprint(t.path) for t in cfg.tasks}
    path = run_dir / TASKS_FILE
    if not path.is_file():
        return now
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(recorded, dict):
            raise ValueError("expected a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: cannot read the tasks' fingerprints ({exc})"
        ) from None
    for spec in cfg.tasks:
        old, new = recorded.get(spec.name), now[spec.name]
        if not isinstance(old, dict):
            continue  # not in the record: the config check compares the task list
        changed = sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f))
        if changed:
            raise ConfigError(
                f"{run_dir}: task {spec.name!r} ({spec.path}) changed since the run "
                f"started ({', '.join(changed)} differ); its finished cells used the "
                "old queries: restore the task, or choose another --out"
            )
    return now


def record_tasks(run_dir: Path, fingerprints: dict[str, dict[str, str]]) -> None:
    """Write the tasks' fingerprints (:func:`check_tasks`) unless the run holds them."""
    path = run_dir / TASKS_FILE
    if not path.is_file():
        atomic_write_json(path, fingerprints, sort_keys=True)
