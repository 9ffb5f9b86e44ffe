"""The conventions module against the code: vec order, folding, equations cited, files named."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from kfacel.curvature import conventions
from kfacel.curvature.layers import LayerKind, fold, unfold

ROOT = Path(__file__).resolve().parents[2]
LABELS = re.findall(r"^\((K\d|P\d)\)", conventions.__doc__ or "", flags=re.M)


def test_every_numbered_equation_is_cited_in_the_code() -> None:
    assert [*(f"K{i}" for i in range(1, 10)), "P1", "P2", "P3", "P4"] == LABELS
    code = "".join(
        f.read_text(encoding="utf-8")
        for f in (ROOT / "src" / "kfacel").rglob("*.py")
        if f.name != "conventions.py"
    )
    assert [k for k in LABELS if f"({k})" not in code] == []


def test_every_test_file_it_names_exists() -> None:
    named = re.findall(r"``(tests/[\w/]+\.py)``", conventions.__doc__ or "")
    assert named
    assert [n for n in named if not (ROOT / n).is_file()] == []


def test_row_major_vec_makes_the_block_kron_g_a() -> None:
    """(K2): vec(g āᵀ) = g ⊗ ā for vec = flatten, so the block is kron(g gᵀ, ā āᵀ)."""
    g = torch.tensor([1.0, -2.0], dtype=torch.float64)
    a = torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)
    v = torch.outer(g, a).flatten()
    torch.testing.assert_close(v, torch.kron(g, a))
    torch.testing.assert_close(
        torch.outer(v, v), torch.kron(torch.outer(g, g), torch.outer(a, a))
    )


def test_the_bias_is_the_last_input_column_and_an_embedding_is_its_transpose() -> None:
    """(K1): W~ = [W | b]; Embedding weight [V, d] acts as weight.T [d, V]."""
    w, b = torch.arange(6.0).reshape(2, 3), torch.tensor([7.0, 8.0])
    folded = fold(LayerKind.LINEAR, w, b)
    assert folded.tolist() == [[0, 1, 2, 7], [3, 4, 5, 8]]
    back_w, back_b = unfold(LayerKind.LINEAR, folded, w.shape, True)
    assert torch.equal(back_w, w)
    assert back_b is not None
    assert torch.equal(back_b, b)
    table = torch.arange(6.0).reshape(3, 2)  # [V, d]
    assert torch.equal(fold(LayerKind.EMBEDDING, table, None), table.T)
