"""Consolidate → train on a second task → evaluate: KFC forgets less than no penalty."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kfacel.consolidation import build_penalty, load_state, save_state
from kfacel.data.records import Candidate, LinkingExample
from kfacel.data.tasks import Task
from kfacel.training.continual import consolidate_task, discriminative_lr_groups
from kfacel.training.pipeline import evaluate_split, fit_task, new_linker

WORDS = [
    "heart",
    "lung",
    "liver",
    "kidney",
    "brain",
    "blood",
    "bone",
    "skin",
    "nerve",
    "muscle",
    "fever",
    "pain",
    "cough",
    "rash",
    "tumor",
    "cancer",
    "virus",
    "cell",
    "gene",
    "protein",
    "drug",
    "dose",
    "acute",
    "chronic",
    "severe",
    "mild",
]
CODES = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


def code_task(name: str, words: range, n: int, seed: int) -> list[LinkingExample]:
    """Mention ``WORDS[w]`` links to the concept named ``CODES[w]``: no string overlap.

    Two tasks over disjoint word ranges need different associations learned through
    the same encoders and scorer: plain fine-tuning on the second overwrites the first.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = rng.choice(words)
        pool = [w, *rng.sample([x for x in words if x != w], 4)]
        rng.shuffle(pool)
        cands = tuple(Candidate(f"C{x}", CODES[x]) for x in pool)
        left = " ".join(rng.choices(WORDS, k=3))
        out.append(LinkingExample(WORDS[w], left, "", cands, f"C{w}", f"{name}{i}"))
    return out


def make_task(name: str, words: range, seed: int) -> Task:
    return Task(
        name,
        Path(name),
        code_task(name, words, 256, seed),
        code_task(name, words, 64, seed + 1),
        code_task(name, words, 96, seed + 2),
        {},
    )


TASK_A, TASK_B = range(0, 13), range(13, 26)


@pytest.fixture(scope="module")
def trained_on_a(tmp_path_factory):
    torch.set_num_threads(1)
    a = make_task("A", TASK_A, seed=0)
    linker = new_linker(
        "cnn",
        a.train,
        hidden=32,
        types=False,
        features=False,
        seed=0,
        freeze_embeddings=False,
        embed_dim=32,
        max_mention_length=16,
        max_name_length=4,
    )
    fit_task(linker, a, epochs=4, lr=3e-3, batch_size=16, seed=0)
    return linker, a


def _copy(linker):
    import copy

    return copy.deepcopy(linker)


def test_kfac_forgets_less_than_no_penalty(trained_on_a, tmp_path) -> None:
    linker, a = trained_on_a
    b = make_task("B", TASK_B, seed=10)
    acc_a = evaluate_split(linker, a.test).accuracy
    assert acc_a > 0.8, acc_a  # task A learned (chance is 0.2)
    state = consolidate_task(linker, a, method="kfac")
    save_state(tmp_path, state)
    # As in the paper, λ is chosen on dev: the best A among the λ that learn B.
    runs = {}
    grid = [("kfac", lam) for lam in (10.0, 100.0)]
    for method, lam in [("none", 0.0), *grid]:
        learner = _copy(linker)
        penalty = build_penalty(method, load_state(tmp_path, learner.model), [lam])
        fit_task(learner, b, epochs=5, lr=3e-3, batch_size=16, seed=0, penalty=penalty)
        runs[(method, lam)] = {
            split: (
                evaluate_split(learner, getattr(a, split)).accuracy,
                evaluate_split(learner, getattr(b, split)).accuracy,
            )
            for split in ("dev", "test")
        }
    learned_b = [k for k in runs if k[0] == "kfac" and runs[k]["dev"][1] >= 0.8]
    assert learned_b, runs  # some λ lets KFC learn B (chance is 0.2)
    best = max(learned_b, key=lambda k: runs[k]["dev"][0])
    a_none, _ = runs[("none", 0.0)]["test"]
    a_kfac, b_kfac = runs[best]["test"]
    assert a_none < acc_a - 0.1, runs  # plain fine-tuning forgets A
    assert a_kfac > a_none + 0.1, runs  # KFC keeps more of A
    assert b_kfac > 0.8, runs  # while learning B (chance is 0.2)


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


def test_discriminative_learning_rates_decay_from_the_top() -> None:
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Embedding(5, 4)
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.head = nn.Linear(4, 2)

    groups = discriminative_lr_groups(Net(), lr=1.0, gamma=0.5)
    assert [g["lr"] for g in groups] == [0.125, 0.25, 0.5, 1.0]
    assert groups[-1]["params"][0].shape == (2, 4)  # the head trains at the full rate
    with pytest.raises(ValueError, match="gamma"):
        discriminative_lr_groups(Net(), lr=1.0, gamma=0.0)
