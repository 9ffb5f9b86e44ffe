"""Discriminative learning rates: each layer a factor γ below the one above."""

from __future__ import annotations

import pytest

from kfacel.training.lrc import discriminative_lr_groups


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
