"""torchrun's processes: one ``Env`` per process, started from the environment torchrun sets.

Without torchrun (``WORLD_SIZE`` unset) everything here is a no-op for a world of one, so the
same code runs in one process or many.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import _data


@dataclass(frozen=True)
class Env:
    world: int = 1
    rank: int = 0
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device) -> list[float]:
        """``values`` summed over all processes."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start(device: str) -> tuple[Env, torch.device]:
    """This process's place in torchrun's world, with the process group started (NCCL on GPUs,
    gloo on CPU), and the device it computes on (``cuda:LOCAL_RANK`` on GPUs)."""
    env = Env(int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)))
    where = _data.device(device, env.local)
    if device == "cuda":
        torch.cuda.set_device(where)
    if env.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return env, where


def stop(env: Env) -> None:
    if env.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_sum_(tensors, count: int, device) -> int:
    """Sum ``tensors`` in place over all processes of a started group, and return the total
    of ``count``; a no-op returning ``count`` outside torchrun."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    for t in tensors:
        dist.all_reduce(t)
    total = torch.tensor([count], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def is_main() -> bool:
    """Whether this process writes and reports (rank 0, or the only process)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
