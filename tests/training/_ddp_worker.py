"""A rank of the two-process gloo run of test_trainer (importable by spawn)."""

import os

import torch
import torch.distributed as dist
from _training_synth import batches, tiny_cnn
from safetensors.torch import save_file

from kfacel.training.trainer import TrainSettings, train_task


def run(rank: int, world: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_cnn(dropout=0.0).double()
        train_task(model, batches(32, 0, 8), TrainSettings(epochs=2, lr=1e-2, seed=0))
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    finally:
        dist.destroy_process_group()
