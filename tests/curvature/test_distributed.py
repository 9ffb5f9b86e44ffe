"""K-FAC over 2 gloo ranks, each on half the data, equals K-FAC over all of it on one (K5)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from kfacel.curvature import estimate_diagonal, estimate_kfac
from tests.oracles import TOL64


def _model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3)
    ).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (10,))


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        model, x, y = _model_and_data()
        part = slice(0, 3) if rank == 0 else slice(3, 10)  # unequal shares
        fisher = estimate_kfac(model, [(x[part], y[part])], uncovered="diagonal")
        diag = estimate_diagonal(model, [(x[part], y[part])])
        if rank == 0:
            tensors = {f"{k}.A": f.A for k, f in fisher.items()}
            tensors |= {f"{k}.G": f.G for k, f in fisher.items()}
            tensors |= {f"diag.{k}": v for k, v in diag.items()}
            tensors |= {f"kdiag.{k}": v for k, v in fisher.diagonal.items()}
            tensors["n"] = torch.tensor(float(fisher.num_examples))
            save_file({k: v.contiguous() for k, v in tensors.items()}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_ranks_equal_one(tmp_path) -> None:
    out = str(tmp_path / "rank0.safetensors")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    got = load_file(out)
    model, x, y = _model_and_data()
    fisher = estimate_kfac(model, [(x, y)], uncovered="diagonal")
    diag = estimate_diagonal(model, [(x, y)])
    assert float(got["n"]) == 10
    for k, f in fisher.items():
        torch.testing.assert_close(got[f"{k}.A"], f.A, **TOL64)
        torch.testing.assert_close(got[f"{k}.G"], f.G, **TOL64)
    for k, v in diag.items():
        torch.testing.assert_close(got[f"diag.{k}"], v, **TOL64)
    for k, v in fisher.diagonal.items():
        torch.testing.assert_close(got[f"kdiag.{k}"], v, **TOL64)
