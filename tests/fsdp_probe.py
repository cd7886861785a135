"""Run by tests/test_integrations.py under torchrun: probing a model whose parameters are sharded by FSDP2 (every
forward pass a collective), with unequal shares of prompts per process, against one process."""

import json
import os
import sys

import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from ldyn.data.probesets import load_probe_set
from ldyn.data.tokenize import tokenize_rows
from ldyn.dynamics.probing import probe, probe_across_ranks, probe_items
from ldyn.models.pretrained import byte_tokenizer, prepare, tiny_model

os.environ["HF_HUB_OFFLINE"] = "1"
dist.init_process_group("gloo")
model, tokenizer = prepare(tiny_model(byte_tokenizer(), seed=0), byte_tokenizer())
examples, _ = load_probe_set("embedded", ["chosen", "rejected"], 3)  # 3 prompts over 2 processes: unequal shares
items = probe_items(tokenize_rows(tokenizer, [(e.id, e.prompt, e.responses) for e in examples], 128, 64))
one = {(r["example_id"], r["type"]): r["logp_sum"] for r in probe(model, items, 0, share_prompt=False, progress=False)}
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
records = probe_across_ranks(model, items, tokenizer.pad_token_id, batch_tokens=256, progress=False)
if dist.get_rank() == 0:
    got = {(r["example_id"], r["type"]): r["logp_sum"] for r in records}
    max_rel = max(abs(got[k] - one[k]) / abs(one[k]) for k in one)
    with open(sys.argv[1], "w") as f:  # closed (so written) before the `os._exit` below
        json.dump({"keys_equal": got.keys() == one.keys(), "max_rel": max_rel}, f)
dist.barrier()  # no process tears down while another still has a collective in flight
del model  # FSDP's state holds the process group: release it while the interpreter is whole
dist.destroy_process_group()
# Every result is written and both processes met above. Skip the interpreter's own teardown: in it a process has
# aborted at exit after all the work was done ("terminate called without an active exception", SIGABRT), in CI
# at stop 21 and again on 2026-12-04 despite the barrier, the dropped model and destroy_process_group.
os._exit(0)
