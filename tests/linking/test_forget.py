"""``forget_linker``: weights, links and record of a linker; what it cannot reach refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kfacel import TaskState, estimate_kfac, snapshot
from kfacel.linking.forget import forget_linker
from kfacel.linking.linker import Linker


def _linker(**changes) -> tuple[Linker, list[TaskState]]:
    """A one-layer model with states A and B, and a linker holding both tasks' links."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    states = [
        TaskState(t, "kfac", snapshot(model), estimate_kfac(model, [(x[s], y[s])]))
        for t, s in (("A", slice(0, 3)), ("B", slice(3, 8)))
    ]
    fields = {
        "collator": SimpleNamespace(aliases=None),
        "meta": {"history": ["A", "B"]},
        "retrieval": {"A": "links of A", "B": "links of B"},
    } | changes
    return Linker(model, **fields), states


def test_forgetting_drops_the_task_links_and_records_it() -> None:
    linker, states = _linker()
    before = snapshot(linker.model)
    kept, record = forget_linker(linker, states, "A", alpha=1.0, lam=0.5)
    assert [s.task for s in kept] == ["B"]
    assert linker.retrieval == {"B": "links of B"}
    assert linker.meta["forgotten"] == [record]
    assert record["method"] == "kfac-ssd"
    assert record["dampened"] > 0
    after = snapshot(linker.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"collator": SimpleNamespace(aliases=object())}, "alias features"),
        ({"retriever": Path("retriever")}, "fine-tuned retriever"),
    ],
)
def test_what_forget_cannot_reach_is_refused(changes, match) -> None:
    linker, states = _linker(**changes)
    before = snapshot(linker.model)
    with pytest.raises(ValueError, match=match):
        forget_linker(linker, states, "A")
    assert all(torch.equal(before[n], p) for n, p in snapshot(linker.model).items())
