"""Several processes (accelerate launch, torchrun): who this process is, and the two collectives the instruments
need. Everything is a no-op in a single process, so callers never branch on it.

Under DDP any process may run a forward pass of the unwrapped model alone; under DeepSpeed ZeRO-3 and FSDP the
parameters are sharded and every forward pass is a collective, so each process must run the same number of them
(`dynamics.probing.probe_across_ranks` pads the short shares; `dynamics.readout` runs every forward on every
process and sums the update's terms over them, `sum_over_ranks`).
"""

from __future__ import annotations

import math
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


def sum_over_ranks(columns: dict[str, torch.Tensor], device=None) -> dict[str, torch.Tensor]:
    """Every process's `columns` summed, on every process: the union of their names (sorted), a name a process
    lacks counting as zeros of the shape the others give it. `device`: where the collective's tensor lives (the
    backend's: CPU for gloo, the GPU for NCCL) when this process has no column of its own."""
    if rank_and_world()[1] == 1:
        return columns
    layouts = [None] * rank_and_world()[1]
    dist.all_gather_object(layouts, {k: (tuple(v.shape), v.dtype) for k, v in columns.items()})
    layout = {k: shape_dtype for part in layouts for k, shape_dtype in part.items()}
    names = sorted(layout)
    if not names:
        return {}
    device = next(iter(columns.values())).device if columns else (device or "cpu")
    flat = torch.cat(
        [
            columns[k].to(device, torch.float64).flatten()
            if k in columns
            else torch.zeros(math.prod(layout[k][0]), dtype=torch.float64, device=device)
            for k in names
        ]
    )
    dist.all_reduce(flat)
    out, offset = {}, 0
    for k in names:
        shape, dtype = layout[k]
        n = math.prod(shape)
        out[k] = flat[offset : offset + n].view(shape).to(dtype)
        offset += n
    return out


def full_weight(param: torch.Tensor) -> torch.Tensor:
    """A parameter as one plain tensor: a DTensor's shards (FSDP2's parameters) gathered whole -- a collective, so
    every process calls it alike -- and any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param


def reshard(model) -> None:
    """Put an FSDP2 model's parameters back in their shards after forward passes without a backward (a
    measurement's): FSDP2 keeps the root module's gathered after a forward, for the backward it expects, and an
    optimizer step would then update the shards under a forward's stale copy. A no-op on any other model."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
