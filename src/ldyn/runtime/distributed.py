"""Several processes (accelerate launch, torchrun): who this process is, and the two collectives the instruments
need. Everything is a no-op in a single process, so callers never branch on it.

Under DDP any process may run a forward pass of the unwrapped model alone; under DeepSpeed ZeRO-3 and FSDP the
parameters are sharded and every forward pass is a collective, so each process must run the same number of them
(`dynamics.probing.probe_across_ranks` pads the short shares).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def processes():
    """accelerate's view of the processes this one belongs to (it joins their group on first use). Without a GPU,
    processes started by `torchrun` (or `accelerate launch` with ACCELERATE_USE_CPU=1) form a CPU group (gloo)."""
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait until every process gets here."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def max_over_ranks(value: int) -> int:
    """The largest `value` of any process."""
    if rank_and_world()[1] == 1:
        return value
    out = [0] * rank_and_world()[1]
    dist.all_gather_object(out, value)
    return max(out)


def gather_to_main(rows: list) -> list:
    """Every process's `rows`, concatenated in rank order, on rank 0; [] on the others."""
    rank, world = rank_and_world()
    if world == 1:
        return rows
    out = [None] * world if rank == 0 else None
    dist.gather_object(rows, out, dst=0)
    return [row for part in out for row in part] if rank == 0 else []
