"""Config loading, validation, overrides and round trips against hand-written TOML."""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import pytest

from kfacel.experiments import config as config_module
from kfacel.experiments.config import (
    ConfigError,
    ExperimentConfig,
    Method,
    TaskSpec,
    Uncovered,
    apply_overrides,
    arm_names,
    load_config,
)
from kfacel.types import FisherKind, KFACApprox

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SHIPPED = sorted(CONFIGS.glob("*.toml"))
EVERY_CONFIG = sorted(CONFIGS.rglob("*.toml"))
STUDY_CONFIGS = [p for p in EVERY_CONFIG if p.parent != CONFIGS]
PAPER = [
    p for p in SHIPPED if p.stem.startswith("paper-") and not p.stem.endswith("-fine")
]

MINIMAL = """
name = "t"
methods = ["none", "kfac"]
lam_grid = [10, 1e3]
tiers = [1, 2]
seeds = [0, 1]
output_dir = "runs/t"

[[tasks]]
name = "a"
path = "tasks/a"

[[tasks]]
name = "b"
path = "tasks/b"

[model]
name = "cnn"
hidden = 16

[train]
epochs = 2
lr = 0.01
max_train_examples = 100

[curvature]
fisher = "sampled"
max_examples = 50
"""


def _write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_doctests() -> None:
    assert doctest.testmod(config_module).failed == 0


def test_load_minimal(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.name == "t"
    assert cfg.tasks == (TaskSpec("a", "tasks/a"), TaskSpec("b", "tasks/b"))
    assert cfg.methods == (Method.NONE, Method.KFAC)
    assert cfg.lam_grid == (10.0, 1000.0)
    assert all(isinstance(x, float) for x in cfg.lam_grid)
    assert cfg.seeds == (0, 1)
    assert cfg.model.name == "cnn"
    assert cfg.model.settings == {"hidden": 16}
    assert cfg.train.epochs == 2
    assert cfg.train.max_train_examples == 100
    assert cfg.curvature.fisher is FisherKind.SAMPLED
    assert cfg.curvature.uncovered is Uncovered.IGNORE
    assert cfg.penalty.new_task_tolerance == 2.0


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("epochs = 2", "epochz = 2", r"unknown key 'train\.epochz'"),
        ('name = "t"', 'name = "t"\nfoo = 1', r"unknown key 'foo'"),
        (
            'path = "tasks/a"',
            'path = "tasks/a"\nsplit = 1',
            r"unknown key 'tasks\[0\]\.split'",
        ),
        ("hidden = 16", "hiden = 16", r"unknown key 'model\.hiden' for model 'cnn'"),
    ],
)
def test_unknown_keys_name_key_and_file(
    tmp_path: Path, old: str, new: str, match: str
) -> None:
    path = _write(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("epochs = 2", 'epochs = "two"', r"train\.epochs: expected int"),
        ('fisher = "sampled"', 'fisher = "squared"', r"curvature\.fisher: 'squared'"),
        ('methods = ["none", "kfac"]', 'methods = ["nope"]', r"methods: 'nope'"),
        ("tiers = [1, 2]", "tiers = [1, 2, 3]", "tier 3 needs 3 tasks"),
        ("tiers = [1, 2]", "tiers = [4]", "4 is not 1, 2 or 3"),
        ('name = "b"', 'name = "a"', "unique"),
        ("lam_grid = [10, 1e3]", "lam_grid = [0]", "positive"),
        ('name = "cnn"', 'name = "rnn"', r"'rnn' is not one of"),
        ("epochs = 2", "epochs = true", r"train\.epochs: expected an integer"),
        (
            "epochs = 2",
            "epochs = 2\nwarmup = 1.0",
            r"train\.warmup must be in \[0, 1\)",
        ),
        ("epochs = 2", 'epochs = 2\nschedule = "cosine"', r"'cosine' is not one of"),
    ],
)
def test_bad_values_are_errors(tmp_path: Path, old: str, new: str, match: str) -> None:
    path = _write(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_required_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tasks"):
        load_config(_write(tmp_path, 'name = "x"'))
    with pytest.raises(ConfigError, match=r"c\.toml"):
        load_config(_write(tmp_path, "name = "))


def test_overrides_convert_types(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, MINIMAL),
        [
            "train.lr=3e-4",
            "train.epochs=5",
            "train.max_train_examples=none",
            "train.device=cuda",
            "curvature.fisher=exact",
            "curvature.damping=1e-3",
            "penalty.tier3_search_first=true",
            "methods=none,ewc,kfac",
            "lam_grid=[1, 100]",
            "seeds=3",
            "model.hidden=32",
            "name=renamed",
        ],
    )
    assert cfg.train.lr == 3e-4
    assert cfg.train.epochs == 5
    assert cfg.train.max_train_examples is None
    assert cfg.train.device == "cuda"
    assert cfg.curvature.fisher is FisherKind.EXACT
    assert cfg.curvature.damping == 1e-3
    assert cfg.penalty.tier3_search_first is True
    assert cfg.methods == (Method.NONE, Method.EWC, Method.KFAC)
    assert cfg.lam_grid == (1.0, 100.0)
    assert cfg.seeds == (3,)
    assert cfg.model.settings == {"hidden": 32}
    assert cfg.name == "renamed"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.lrr=1", r"unknown key 'lrr'"),
        ("train.epochs=1.5", r"expected int"),
        ("train", "KEY=VALUE"),
        ("model.hiden=3", r"unknown key 'model\.hiden'"),
        ("train.lr.x=1", "no subkeys"),
        ("train=1", "one by one"),
        ("tasks=x", "one by one"),
        ("tiers=3", "tier 3 needs"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, match: str) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match=match):
        apply_overrides(cfg, [override])


def test_curvature_approx_is_read_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.curvature.approx is KFACApprox.EXPAND
    cfg = apply_overrides(cfg, ["curvature.approx=reduce"])
    assert cfg.curvature.approx is KFACApprox.REDUCE
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="approx"):
        apply_overrides(cfg, ["curvature.approx=middle"])


def test_to_dict_round_trips_through_json(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL), ["curvature.uncovered=diagonal"])
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["curvature"]["uncovered"] == "diagonal"
    assert data["methods"] == ["none", "kfac"]
    assert data["model"] == {"name": "cnn", "settings": {"hidden": 16}}
    assert ExperimentConfig.from_dict(data) == cfg


def test_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        cfg.name = "x"  # type: ignore[misc]


def test_every_config_is_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {
        "paper-cnn",
        "paper-transformer",
        "paper-cnn-small",
        "paper-transformer-small",
    } <= names


@pytest.mark.parametrize(
    "path", EVERY_CONFIG, ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_every_file_under_configs_loads(path: Path) -> None:
    for arm in arm_names(path) or [None]:
        cfg = load_config(path, arm=arm)
        assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


ARMED = (
    MINIMAL
    + """
[arms.strong]
lam_grid = [1e5]
curvature.damping = 1e-6

[arms.plain]
name = "plain-run"
methods = ["none"]
"""
)


def test_an_arm_is_the_config_with_its_tables_merged_over_it(tmp_path: Path) -> None:
    path = _write(tmp_path, ARMED)
    assert arm_names(path) == ("strong", "plain")
    strong = load_config(path, arm="strong")
    base = load_config(_write(tmp_path, MINIMAL, "base.toml"))
    assert strong.lam_grid == (1e5,)
    assert strong.curvature.damping == 1e-6
    assert strong.curvature.fisher is FisherKind.SAMPLED  # the rest of [curvature] kept
    assert strong.curvature.max_examples == 50
    assert strong.methods == base.methods
    assert strong.train == base.train
    assert (strong.name, strong.output_dir) == ("t-strong", "runs/t/strong")
    plain = load_config(path, ["train.lr=0.5"], arm="plain")
    assert (plain.name, plain.output_dir) == ("plain-run", "runs/t/plain")
    assert plain.methods == (Method.NONE,)
    assert plain.train.lr == 0.5


@pytest.mark.parametrize(
    ("text", "arm", "match"),
    [
        (ARMED, None, r"has arms \['strong', 'plain'\]: name one"),
        (ARMED, "weak", r"'weak' is not one of them"),
        (MINIMAL, "strong", "has no arms"),
        (ARMED + 'output_dir = "x"\n', "plain", r"arms\.plain\.output_dir"),
        (MINIMAL + "[arms.'a/b']\nseeds = [1]\n", "a/b", "arm name 'a/b'"),
        (ARMED.replace("lam_grid = [1e5]", "lam_grd = [1e5]"), "strong", "lam_grd"),
    ],
)
def test_arms_refused_name_the_arm_and_file(tmp_path, text, arm, match) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path, arm=arm)
    assert str(path) in str(err.value)


def test_the_studies_have_their_configs() -> None:
    assert {str(p.relative_to(CONFIGS)) for p in STUDY_CONFIGS} >= {
        "forgetting/factored-six.toml",
        "forgetting/t3-factored.toml",
        "transformer/lam-grid-ewc.toml",
        "transformer/references.toml",
    }


@pytest.mark.parametrize(
    "path", STUDY_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_a_study_config_is_one_run_named_in_its_header(path: Path) -> None:
    """One config, one run directory; the header says what reports it and how to run it.

    An armed config's run directory holds one directory per arm.
    """
    arms = arm_names(path)
    cfg = load_config(path, arm=arms[0] if arms else None)
    name = cfg.name.removesuffix(f"-{arms[0]}") if arms else cfg.name
    top = Path(cfg.output_dir).parent.as_posix() if arms else cfg.output_dir
    assert top == f"runs/{name}"
    text = path.read_text(encoding="utf-8")
    header = text[: text.index("\nname = ")]
    assert all(line.startswith("#") for line in header.splitlines())
    assert "benchmarks/archive/journal.md" in header or "docs/results.md" in header
    assert f"kfacel experiment {path.relative_to(CONFIGS.parent).as_posix()}" in header
    assert f"kfacel report {top}" in header


@pytest.mark.parametrize(
    "path", STUDY_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_a_study_config_cites_sections_that_exist(path: Path) -> None:
    """The journal's and docs/results.md's sections a header names are headings there."""
    text = path.read_text(encoding="utf-8")
    lines = text[: text.index("\nname = ")].splitlines()
    header = " ".join(line.lstrip("# ") for line in lines)
    journal = re.findall(r'archive/journal\.md, section "([^"]+)"', header)
    results = re.findall(r'docs/results\.md, "([^"]+)"', header)
    assert journal or results, "no section of the journal or of docs/results.md named"
    for section in journal:
        assert _heading_starts(REPO / "benchmarks/archive/journal.md", section), section
    for section in results:
        assert _heading_starts(REPO / "docs/results.md", section), section


def _heading_starts(page: Path, title: str) -> bool:
    """Whether a Markdown heading of ``page`` begins with ``title``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    return any(
        line.lstrip("#").strip().startswith(title) for line in lines if line[:1] == "#"
    )


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert [t.name for t in cfg.tasks] == ["medmentions", "cadec", "ncbi"]
    small = path.stem.endswith("-small")
    assert all(
        t.path == f"tasks/{'public3-small' if small else 'public3'}/{t.name}"
        for t in cfg.tasks
    )
    if path.stem == "paper-transformer-small":
        # the transformer config's CPU sizing: tiers 1-3 on none and the budgets (LRC and
        # replay beside it at tier 2: configs/transformer/references.toml)
        assert set(cfg.methods) == {Method.NONE, Method.KFAC_BUDGET, Method.EWC_BUDGET}
        assert cfg.budget_grid == (0.005,)
        assert cfg.penalty.tier3_factors == (1.0,)
        assert cfg.tiers == (1, 2, 3)
        assert not cfg.combined
        assert cfg.penalty.budget_rate == 13.0  # one epoch: λ may span e^13
    else:
        assert cfg.lam_grid == (1e1, 1e3, 1e5, 1e7, 1e9)
        assert set(cfg.methods) >= {
            Method.NONE,
            Method.LRC,
            Method.L2,
            Method.EWC,
            Method.KFAC,
        }
        assert cfg.tiers == (1, 2, 3)
    if small:
        assert cfg.train.epochs < 10
    else:
        assert cfg.train.epochs == 10  # the paper's setting
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_fine_grid_config_differs_from_paper_cnn_small_in_grid_and_methods() -> None:
    """Its cells are paper-cnn-small's where the λ agree, so they may be shared."""
    fine = load_config(CONFIGS / "paper-cnn-small-fine.toml").to_dict()
    paper = load_config(CONFIGS / "paper-cnn-small.toml").to_dict()
    assert set(paper["lam_grid"]) < set(fine["lam_grid"])
    assert set(fine["methods"]) == {"none", "ewc", "kfac"}
    differ = {k for k in paper if paper[k] != fine[k]}
    assert differ == {"name", "methods", "lam_grid", "tiers", "output_dir"}


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lam_grid", [float("inf")], "lam_grid: values must be positive and finite"),
        ("lam_grid", [1e300], "lam_grid: values must be positive and finite"),
        ("lam_grid", [], "lam_grid: tiers 2 and 3 need at least one λ"),
        ("methods", [], "methods: give at least one method"),
        ("train", {"epochs": 0}, r"train\.epochs must be"),
        ("train", {"lr": -1.0}, r"train\.lr must be"),
        ("train", {"max_train_examples": -15}, r"train\.max_train must be"),
        ("train", {"precision": "float16"}, r"train\.precision"),
        ("curvature", {"factor_rank": 0}, r"curvature\.factor_rank: must be >= 1"),
    ],
)
def test_values_the_run_cannot_use_are_refused_when_loading(key, value, match) -> None:
    data = {
        "name": "t",
        "tasks": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}],
    }
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_dict({**data, "tiers": [1, 2], key: value})


def test_the_diagnosis_config_runs_two_chosen_pairs_without_combined() -> None:
    cfg = load_config(CONFIGS / "forgetting-diagnosis.toml")
    assert cfg.ordered_pairs() == [("medmentions", "cadec"), ("ncbi", "medmentions")]
    assert cfg.seeds == (0, 1, 2)
    with pytest.raises(ConfigError, match="pairs: ncbi>nope is not an order"):
        apply_overrides(cfg, ['pairs=["ncbi>nope"]'])


def test_overrides_checked_against_each_other_apply_in_either_order() -> None:
    cfg = load_config(CONFIGS / "forgetting-diagnosis.toml")
    methods, grid = 'methods=["none","kfac-budget"]', "budget_grid=[0.01]"
    for order in ([methods, grid], [grid, methods]):
        assert apply_overrides(cfg, order).budget_grid == (0.01,)
    with pytest.raises(ConfigError, match="budget_grid: methods"):
        apply_overrides(cfg, [methods])
