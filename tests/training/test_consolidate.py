"""Consolidate → train on a second task → evaluate: KFC forgets less than no penalty.

The forgetting test uses the classic setting where forgetting is reliable and fast: an MLP
on two input regions with different labelling rules, through the library chain
(``estimate_kfac`` → ``KFACPenalty.add_grad_`` while training → evaluate), λ chosen on
dev. The ranker tests below check ``consolidate_task``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests._synth import TASK_A, code_task
from torch import nn

from kfacel.consolidation import snapshot
from kfacel.curvature import KFACApprox, estimate_kfac
from kfacel.linking.linker import new_linker
from kfacel.penalties import KFACPenalty
from kfacel.tasks.directory import Task
from kfacel.training.consolidate import consolidate_task
from kfacel.training.fit import fit_task
from kfacel.training.trainer import TrainSettings


def make_task(name: str, words: range, seed: int) -> Task:
    return Task(
        name,
        Path(name),
        code_task(name, words, 256, seed),
        code_task(name, words, 64, seed + 1),
        code_task(name, words, 96, seed + 2),
        {},
    )


def _region_task(
    seed: int, centre: float
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """4 classes: ``argmax(W (x − centre))`` for ``x ~ N(centre, I)``, W fixed by centre."""
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(100 + int(centre)))
    out = {}
    for i, (split, n) in enumerate((("train", 512), ("dev", 256), ("test", 256))):
        x = (
            torch.randn(n, 10, generator=torch.Generator().manual_seed(seed + i))
            + centre
        )
        out[split] = (x, ((x - centre) @ w.T).argmax(1))
    return out


def _fit(model: nn.Module, data: dict, penalty=None, epochs: int = 30) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data["train"]
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=order).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            if penalty is not None:
                penalty.add_grad_(model)  # closed-form gradient, as the trainer does
            opt.step()


def _accuracy(model: nn.Module, data: dict, split: str) -> float:
    x, y = data[split]
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_kfac_forgets_less_than_no_penalty() -> None:
    torch.manual_seed(0)
    a, b = _region_task(0, 0.0), _region_task(10, 3.0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4))
    _fit(model, a)
    acc_a = _accuracy(model, a, "test")
    assert acc_a > 0.9, acc_a  # task A learned (chance is 0.25)
    x, y = a["train"]
    fisher = estimate_kfac(
        model, [(x[i : i + 128], y[i : i + 128]) for i in range(0, 512, 128)]
    )
    runs = {}
    for lam in (0.0, 1.0, 10.0, 100.0):
        learner = copy.deepcopy(model)
        penalty = (
            KFACPenalty().add_task(snapshot(model), fisher, lam=lam) if lam else None
        )
        _fit(learner, b, penalty)
        runs[lam] = {
            s: (_accuracy(learner, a, s), _accuracy(learner, b, s))
            for s in ("dev", "test")
        }
    # λ chosen on dev as in the paper: the best old task among those that keep the new one
    keep_b = [
        lam for lam in runs if lam and runs[lam]["dev"][1] >= runs[0.0]["dev"][1] - 0.05
    ]
    assert keep_b, runs
    best = max(keep_b, key=lambda lam: runs[lam]["dev"][0])
    (a_none, b_none), (a_kfac, b_kfac) = runs[0.0]["test"], runs[best]["test"]
    assert a_none < acc_a - 0.2, runs  # plain fine-tuning forgets A
    assert a_kfac > a_none + 0.1, runs  # KFC keeps more of A ...
    assert b_kfac > b_none - 0.05, runs  # ... at (almost) no cost on B


@pytest.fixture(scope="module")
def trained_on_a(tmp_path_factory):
    torch.set_num_threads(1)
    a = make_task("A", TASK_A, seed=0)
    linker = new_linker(
        "cnn",
        a.train,
        hidden=16,
        types=False,
        features=False,
        seed=0,
        freeze_embeddings=False,
        embed_dim=16,
        max_mention_length=16,
        max_name_length=4,
    )
    fit_task(linker, a, TrainSettings(epochs=1, lr=3e-3, batch_size=32, seed=0))
    return linker, a


def test_consolidate_task_methods_and_subsets(trained_on_a) -> None:
    linker, a = trained_on_a
    ewc = consolidate_task(linker, a, method="ewc", max_examples=50, seed=3)
    assert ewc.meta["examples_used"] == 50
    assert ewc.curvature.num_examples == 50
    again = consolidate_task(linker, a, method="ewc", max_examples=50, seed=3)
    assert ewc.meta["fingerprint"] == again.meta["fingerprint"]
    l2 = consolidate_task(linker, a, method="l2")
    assert l2.curvature is None
    assert set(l2.anchor) == {
        n for n, p in linker.model.named_parameters() if p.requires_grad
    }
    with pytest.raises(ValueError, match="method"):
        consolidate_task(linker, a, method="full")


def test_consolidate_task_estimates_on_the_held_out_dev_split(trained_on_a) -> None:
    from kfacel.consolidation import TASK_EXAMPLES
    from kfacel.training.consolidate import fingerprint

    linker, a = trained_on_a
    dev = consolidate_task(linker, a, method="ewc", split="dev")
    train = consolidate_task(linker, a, method="ewc")
    assert dev.meta["split"] == "dev"
    assert dev.meta["examples_used"] == len(a.dev) != len(a.train)
    assert dev.meta["fingerprint"] == fingerprint(a.dev)
    assert dev.meta[TASK_EXAMPLES] == len(a.train)  # bayes λ still counts training
    assert not all(
        torch.allclose(dev.curvature[n], train.curvature[n]) for n in dev.curvature
    )
    with pytest.raises(ValueError, match="split must be one of"):
        consolidate_task(linker, a, split="test")


def test_consolidate_task_passes_the_kfac_approximation(trained_on_a) -> None:
    """The approximation reaches estimate_kfac: reduce (K8) is named, differs."""
    linker, a = trained_on_a
    expand = consolidate_task(linker, a, max_examples=8, seed=1)
    reduce = consolidate_task(linker, a, max_examples=8, seed=1, approx="reduce")
    assert expand.curvature.approx is KFACApprox.EXPAND
    assert reduce.curvature.approx is KFACApprox.REDUCE
    shared = [n for n, f in expand.curvature.items() if f.kind != "embedding"]
    assert any(
        not torch.allclose(expand.curvature[n].A, reduce.curvature[n].A) for n in shared
    )


def test_consolidation_stays_float32_when_training_would_run_in_bfloat16(
    trained_on_a, monkeypatch
) -> None:
    """Precision ``auto`` picks bfloat16 for such a ranker; its Fisher is still float32."""
    linker, a = trained_on_a
    reference = consolidate_task(linker, a, method="kfac", max_examples=50)
    monkeypatch.setattr("kfacel.models.precision.cpu_has_bfloat16", lambda: True)
    monkeypatch.setattr(linker.model, "cpu_bfloat16", True, raising=False)
    state = consolidate_task(linker, a, method="kfac", max_examples=50)
    for name in state.curvature:
        got, ref = state.curvature[name], reference.curvature[name]
        assert got.A.dtype == got.G.dtype == torch.float32, name
        assert torch.equal(got.A, ref.A), name
        assert torch.equal(got.G, ref.G), name
