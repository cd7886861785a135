"""Run by tests/test_readout_sharded.py under torchrun: the readout decomposition (forward passes only) of an SGD
step of a model whose parameters are sharded by FSDP2 (every forward pass a collective), each process with its half
of the update batch, against one process with the whole batch on an unsharded copy. Writes, per process,
`<out>.<rank>.json`: {"one": rows in one process, "sharded": rows of the sharded run, "idle": ..., "idle_one": ...}
for each loss."""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from ldyn.config import LossConfig
from ldyn.data.tokenize import collate_pairs
from ldyn.dynamics import readout
from ldyn.dynamics.probing import ProbeItem
from ldyn.logprobs.padded import sequence_logps
from ldyn.losses import PairLogps, get_loss
from ldyn.models.pretrained import byte_tokenizer, prepare, tiny_model
from ldyn.train.trainer import TrainExample

os.environ["HF_HUB_OFFLINE"] = "1"
LR, PAD = 0.5, 0
UPDATE = [
    TrainExample("u0", [5, 6, 7], [8, 9, 10], [11, 12]),
    TrainExample("u1", [1, 2], [3, 4], [5, 6, 7]),
    TrainExample("u2", [20, 21, 22, 23], [24, 25], [26, 27, 28, 29]),
    TrainExample("u3", [30, 31], [32, 33, 34, 35], [36]),
]
OBSERVED = [
    ProbeItem("o0", "chosen", [5, 6, 7], [8, 9, 10]),
    ProbeItem("o0", "rejected", [5, 6, 7], [11, 12]),
    ProbeItem("o1", "chosen", [40, 41], [42, 43, 44]),
    ProbeItem("o2", "chosen", [50, 51, 52], [53, 54]),
]


def mean_loss(model, spec, cfg, examples, reference):
    """The training loss of `examples` (its mean over them)."""
    s = sequence_logps(model, collate_pairs(examples, PAD, spec.needs_rejected))
    return spec.fn(PairLogps.from_rows(s.sum, s.n_tokens, len(examples)), reference, cfg).losses.mean()


def references(model, examples):
    """Log-probs of a slightly different model, so that the DPO sigmoid is not at 1/2."""
    with torch.no_grad():
        s = sequence_logps(model, collate_pairs(examples, PAD, True)).sum
    s = s + 0.1 * torch.arange(len(s), dtype=s.dtype).sin()
    return PairLogps(s[: len(examples)], s[len(examples) :], None, None)


def part(reference, keep):
    return None if reference is None else PairLogps(reference.chosen[keep], reference.rejected[keep], None, None)


def decompose(model, spec, cfg, examples, reference, step=True):
    """An SGD step of the mean loss (gradients averaged over the processes by FSDP) with the readout's begin
    between the backward and the step (where Hugging Face's `on_pre_optimizer_step` calls it), then finish."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    if step:
        mean_loss(model, spec, cfg, examples, reference).backward()
    start = readout.begin(model, LR, OBSERVED, PAD, loss=spec, loss_cfg=cfg, examples=examples, reference=reference)
    if step:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return readout.finish(model, start)


def main(out: str) -> None:
    tokenizer = byte_tokenizer()
    base, _ = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    results = {}
    # in one process first (no process group yet: no collective), each on a copy of the same model
    for name in ("sft", "dpo"):
        spec, cfg = get_loss(name), LossConfig(beta=0.5)
        reference = references(base, UPDATE) if spec.needs_reference else None
        results[name] = {
            "one": decompose(copy.deepcopy(base), spec, cfg, UPDATE, reference),
            "idle_one": decompose(copy.deepcopy(base), spec, cfg, UPDATE[:2], part(reference, [0, 1]), step=False),
        }
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = list(range(rank, len(UPDATE), world))  # this process's share of the update batch
    for name in ("sft", "dpo"):
        spec, cfg = get_loss(name), LossConfig(beta=0.5)
        reference = references(base, UPDATE) if spec.needs_reference else None
        model = copy.deepcopy(base)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        # rank 0 holds the first two examples, the other none (dummy forwards): no step, so the rows are the
        # predictions of the mean over processes (half of rank 0's own mean) and observed = 0
        idle = UPDATE[:2] if rank == 0 else []
        results[name]["idle"] = decompose(model, spec, cfg, idle, part(reference, [0, 1]) if idle else None, False)
        shares = [UPDATE[i] for i in mine]
        results[name]["sharded"] = decompose(model, spec, cfg, shares, part(reference, mine))
        del model
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(results, f)
    dist.barrier()  # no process tears down while another still has a collective in flight
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    os._exit(0)  # results written and processes met: no interpreter teardown to abort in (see fsdp_probe.py)
