"""The HF penalty plan: the strength and damping defaults of every other entry point."""

from __future__ import annotations

import pytest

from kfacel.penalties.strength import (
    DEFAULT_BUDGET,
    DEFAULT_BUDGET_RATE,
    DEFAULT_KFAC_DAMPING,
    Damping,
    Strength,
)
from kfacel.training.continual import ContinualSettings

pytest.importorskip("accelerate")
pytest.importorskip("transformers")
hf = pytest.importorskip("kfacel.hf")

from kfacel.hf.penalties import plan_groups  # noqa: E402
from tests.hf._tiny import classifier, pad_collator, sequence_rows  # noqa: E402

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def states():
    model = classifier()
    rows = sequence_rows(4, seed=3)
    return [
        hf.consolidate(model, rows, data_collator=pad_collator, task=t, method=m)
        for t, m in [("A", "kfac"), ("B", "ewc")]
    ]


@pytest.mark.parametrize("method", ["kfac", "ewc"])
def test_no_strength_no_damping_are_the_clis_defaults(states, method):
    """As ``kfacel train --penalty METHOD`` (``ContinualSettings``) resolves them."""
    state = next(s for s in states if s.method == method)
    (group,) = plan_groups([state], Strength())
    cli = ContinualSettings(penalty=method)
    assert group.damping == cli.curvature_damping
    assert group.strengths.budgets == (DEFAULT_BUDGET,)  # sequence task: 1 term/row
    assert cli.strength.budget == DEFAULT_BUDGET
    assert cli.strength.budget_rate == DEFAULT_BUDGET_RATE
    if method == "kfac":
        assert group.damping == Damping(DEFAULT_KFAC_DAMPING, "factored")


def test_mixed_methods_take_per_task_values_and_their_own_damping(states):
    strength = Strength(lam_per_task={"A": 1.0, "B": 2.0})
    kfac, ewc = plan_groups(states, strength, damping=1e-3)
    assert (kfac.method, kfac.strengths.lams) == ("kfac", (1.0,))
    assert (ewc.method, ewc.strengths.lams) == ("ewc", (2.0,))
    assert kfac.damping == Damping(1e-3, "factored")  # a δ alone: the method's kind
    assert ewc.damping == Damping(1e-3, "uniform")
    (only,) = plan_groups(states[:1], Strength(lam=1.0), damping_kind="uniform")
    assert only.damping == Damping(DEFAULT_KFAC_DAMPING, "uniform")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strength": Strength(bayes=True)}, "bayes"),
        ({"strength": Strength(lam_per_task={"C": 1.0})}, r"given for \['C'\]"),
        ({"strength": Strength(lam=1.0), "damping_kind": "factored"}, "factored"),
        (
            {"strength": Strength(lam=1.0), "damping": Damping(), "damping_kind": "x"},
            "not both",
        ),
    ],
)
def test_bad_settings_are_refused_naming_them(states, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_groups(states, **kwargs)
