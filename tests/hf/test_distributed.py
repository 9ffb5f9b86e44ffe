"""KFCTrainer over 2 gloo processes adds the same penalty update as over one (P3).

Each process trains one SGD step on its half of the batch with and without the penalty;
the difference of the two updates is ``-lr · ∂R/∂θ`` in both world sizes.
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("kfacel.hf")

pytestmark = [pytest.mark.hf, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _penalty_update(out_dir: str, per_device: int) -> dict[str, torch.Tensor]:
    from tests.hf._tiny import (
        pad_collator,
        perturbed_state,
        sequence_rows,
        training_args,
    )

    rows = sequence_rows(8, seed=0)
    model, state = perturbed_state(rows)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    after = {}
    for states in ([state], []):
        model.load_state_dict(start)
        args = training_args(out_dir, per_device, 1)
        args.ddp_backend = "gloo"
        trainer = hf.KFCTrainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=pad_collator,
            states=states,
            strength=hf.Strength(lam=10.0) if states else None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        after[bool(states)] = {
            n: p.detach().clone() for n, p in model.named_parameters()
        }
    return {n: after[True][n] - after[False][n] for n in start}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    diff = _penalty_update(os.path.dirname(out), per_device=4)
    assert torch.distributed.get_world_size() == 2  # the Trainer ran over both
    if rank == 0:
        save_file({k: v.contiguous() for k, v in diff.items()}, out)


def test_two_processes_add_the_penalty_update_of_one(tmp_path) -> None:
    out = str(tmp_path / "rank0.safetensors")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    two = load_file(out)
    one = _penalty_update(str(tmp_path), per_device=8)
    for name, d in one.items():
        torch.testing.assert_close(two[name], d, rtol=1e-4, atol=1e-6, msg=name)
    assert max(float(d.abs().max()) for d in one.values()) > 0
