"""Training updates replayed as CUDA graphs: the launch bound of a small model on a GPU, removed.

A DPO update of a 135M model on an H200 is a few milliseconds of arithmetic spread over thousands of kernel
launches, so the host's Python and the CUDA driver, not the GPU, set its pace (docs/benchmarks.md, rounds five to
seven). `GraphedUpdate` records the zeroing of the gradients, the forward, the loss and the backward of one batch
shape once as a CUDA graph (`torch.cuda.graph`) and replays it for every later batch of that shape: the host then
launches one graph instead of every kernel. What a graph needs, and how each need is met here:

- fixed shapes: the micro-batch is laid out as the trainer's packed passes (each prompt once, then its responses),
  and their length and number of scored positions are padded up to multiples of `pad_to` tokens, so shapes fall
  into a few buckets; each bucket's graph is recorded the first time it is met;
- fixed addresses: inputs are copied into buffers kept outside the graphs' memory; the gradients are tensors kept
  here (the trainer's `zero_grad(set_to_none=True)` only unhooks them from the parameters: they are hooked back
  before each replay); if a parameter's storage moves (a `.data` swap, a device move), every graph is dropped and
  recorded again;
- nothing that waits for the GPU inside: the attention mask and the scored positions are built on the host and
  copied in (the scored logits gathered by index, not selected by a boolean mask), the metrics are read once
  after the replay, and autocast's weight cache is off.

All graphs share one memory pool, so a run holds one graph's temporaries, not one set per bucket. That is safe
because graphs replay one at a time: a graph's temporaries are dead once it has run, and its output (the metrics)
stays allocated, so no other graph writes over it.

Clipping, the non-finite check, `on_gradients` and the optimizer step stay eager, outside the graph (a fused
optimizer is a few launches), so every optimizer, learning-rate schedule and callback works as before.
`on_forward_end` is not emitted: a graph keeps no forward to differentiate, and instruments take their directions
from a backward of their own, as under a compiled forward.

On a CPU nothing is captured: the same fixed-shape update runs eagerly each time. That is what the float64 test
against the trainer's packed and padded paths checks; the capture itself is checked on a GPU
(`benchmarks/dpo_speed.py --cuda-graphs`, which also compares every update's loss with TRL's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ldyn.data.tokenize import IGNORE
from ldyn.logprobs.packed import attention_mask, pack, packable, packed_passes
from ldyn.logprobs.tokens import supports_logits_to_keep
from ldyn.losses import PairLogps
from ldyn.models.modes import shape_stable_attention


@dataclass
class _Recorded:
    inputs: dict[str, torch.Tensor]  # the buffers the graph reads, on the device
    outputs: torch.Tensor  # what it writes: the metrics (`GraphedUpdate.names`), then any reference log-probs
    graph: torch.cuda.CUDAGraph | None  # None on a CPU: `run` again each time


class GraphedUpdate:
    """A trainer's forward and backward of one micro-batch, recorded per padded shape and replayed."""

    def __init__(self, trainer, pad_to: int = 64):
        self.trainer, self.pad_to = trainer, pad_to
        self.params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.capture = trainer.accelerator.device.type == "cuda"
        self.recorded: dict[tuple, _Recorded] = {}  # by rows, length, scored width, reference computed
        self.grads: list[torch.Tensor | None] | None = None  # each parameter's gradient buffer, once it has one
        self.storage: list[int] = []  # the parameters' addresses the graphs were recorded with
        self.names: list[str] = []  # the metrics, in the order the graphs write them
        self.pool = None  # the memory pool every graph shares (one graph's temporaries at a time)

    def forward_backward(self, examples) -> dict[str, float]:
        """The micro-batch's metrics; the gradient of its mean loss is left in the parameters' `.grad`."""
        trainer = self.trainer
        inputs = self.inputs(examples)
        storage = [p.data_ptr() for p in self.params]
        if storage != self.storage:  # recorded addresses are stale: record again
            self.recorded.clear()
            self.storage = storage
        key = (*inputs["input_ids"].shape, inputs["keep"].shape[1], "ref_known" in inputs)
        recorded = self.recorded.get(key)
        if recorded is None:
            recorded = self.recorded[key] = self.record(inputs)
        else:
            for name, value in inputs.items():
                recorded.inputs[name].copy_(value, non_blocking=True)
            self.hook_gradients()
            if recorded.graph is None:
                recorded.outputs = self.run(recorded.inputs)
            else:
                recorded.graph.replay()
        values = recorded.outputs.tolist()
        if "ref_known" in inputs:  # the reference log-probs the graph computed, cached as the trainer caches them
            fresh, n = values[len(self.names) :], len(examples)
            for i, e in enumerate(examples):
                trainer.reference_cache.setdefault(e.id, (fresh[i], fresh[n + i]))
        return dict(zip(self.names, values[: len(self.names)]))

    def inputs(self, examples) -> dict[str, torch.Tensor]:
        """The micro-batch as fixed-shape buffers: rows of token ids (`input_ids`), the positions whose logits are
        scored in each row (`keep`), the tokens they predict (`targets`, IGNORE in unused slots) and the response
        each belongs to (`owner`; unused slots: one past the last), each response's scored tokens (`n_tokens`)
        and, for losses with a reference, its cached log-probs (`ref_chosen`, `ref_rejected`) and, while some are
        not cached yet, which are (`ref_known`: the graph then runs the reference on the same rows). Rows are the
        trainer's packed passes (`logprobs.packed.packed_passes`: each prompt once, then its responses, with their
        `position_ids` and 4-D `visible` mask; a pad sees only itself) or, for a model that takes no packed row,
        one padded row per response (attention causal, no mask). Lengths are rounded up to `pad_to`."""
        trainer = self.trainer
        prompts = [e.prompt for e in examples]
        responses = [(i, e.chosen) for i, e in enumerate(examples)]
        if trainer.loss.needs_rejected:
            responses += [(i, e.rejected) for i, e in enumerate(examples)]
        packed = packable(trainer.model)
        if packed:
            passes = packed_passes(trainer.model, prompts, responses)
        else:
            passes = [pack(prompts, [r], [r[0]]) for r in responses]
            for row, p in enumerate(passes):
                p.rows.fill_(row)
        n_rows, length = len(passes), self.bucket(max(p.input_ids.shape[1] for p in passes))
        width = self.bucket(max(p.keep.shape[0] for p in passes))
        out = {
            "input_ids": torch.full((n_rows, length), trainer.pad_id, dtype=torch.long),
            "keep": torch.zeros(n_rows, width, dtype=torch.long),
            "targets": torch.full((n_rows, width), IGNORE, dtype=torch.long),
            "owner": torch.full((n_rows, width), len(responses), dtype=torch.long),
            "n_tokens": torch.tensor([len(r) for _, r in responses]),
        }
        if packed:
            out["position_ids"] = torch.zeros(n_rows, length, dtype=torch.long)
            out["visible"] = torch.eye(length, dtype=torch.bool).repeat(n_rows, 1, 1, 1)
        for row, p in enumerate(passes):
            t, n = p.input_ids.shape[1], p.keep.shape[0]
            out["input_ids"][row, :t] = p.input_ids[0]
            out["keep"][row, :n], out["targets"][row, :n], out["owner"][row, :n] = p.keep, p.targets, p.rows
            if packed:
                out["position_ids"][row, :t] = p.position_ids[0]
                out["visible"][row, 0, :t, :t] = p.visible[0, 0]
        if trainer.loss.needs_reference:  # cached log-probs; those not yet known the graph computes itself
            known = [trainer.reference_cache.get(e.id) for e in examples]
            out["ref_chosen"], out["ref_rejected"] = (
                torch.tensor([0.0 if k is None else k[side] for k in known], dtype=self.dtype) for side in (0, 1)
            )
            if None in known:
                out["ref_known"] = torch.tensor([k is not None for k in known])
        device = trainer.accelerator.device
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    def bucket(self, n: int) -> int:
        return max(1, math.ceil(n / self.pad_to)) * self.pad_to

    @property
    def dtype(self) -> torch.dtype:
        """The log-probs' dtype: the model's, at least float32 (as `rows_logps` scores them)."""
        return torch.promote_types(self.params[0].dtype, torch.float32)

    def record(self, inputs: dict[str, torch.Tensor]) -> _Recorded:
        """Buffers for a new shape, run once to warm up (lazy initialisations, the gradients' first allocation),
        then captured and replayed: the update is computed exactly once either way."""
        static = {name: value.clone() for name, value in inputs.items()}
        if not self.capture:
            self.hook_gradients()
            return _Recorded(static, self.run(static), None)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.hook_gradients()
            self.run(static)
        torch.cuda.current_stream().wait_stream(side)
        self.hook_gradients()
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.run(static)
        graph.replay()
        return _Recorded(static, outputs, graph)

    def hook_gradients(self) -> None:
        """Point every parameter's `.grad` at its kept buffer (the first run allocates them)."""
        if self.grads is None:
            return
        for p, grad in zip(self.params, self.grads):
            p.grad = grad

    def run(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Zero the gradients, forward, loss and backward on fixed-shape buffers: the metrics as one tensor, followed
        by the reference's log-probs of every row when some were not cached (`ref_known`)."""
        trainer = self.trainer
        if self.grads is not None:
            torch._foreach_zero_([g for g in self.grads if g is not None])
        n_responses = x["n_tokens"].shape[0]
        n_examples = n_responses // 2 if trainer.loss.needs_rejected else n_responses
        sums = self.sums(trainer.forward_model, x)
        reference, fresh = None, []
        if trainer.loss.needs_reference:
            chosen, rejected = x["ref_chosen"], x["ref_rejected"]
            if "ref_known" in x:  # the reference's forward on the same rows, in the same graph
                with torch.no_grad():
                    fresh = [self.sums(trainer.ref_model, x)]
                chosen = torch.where(x["ref_known"], chosen, fresh[0][:n_examples])
                rejected = torch.where(x["ref_known"], rejected, fresh[0][n_examples:])
            reference = PairLogps(chosen, rejected, x["n_tokens"][:n_examples], x["n_tokens"][n_examples:])
        loss, metrics = trainer.loss_from(sums, x["n_tokens"], n_examples, reference)
        loss.backward()
        if self.grads is None:
            self.grads = [p.grad for p in self.params]
        self.names = list(metrics)
        return torch.cat([torch.stack([v.detach().to(self.dtype) for v in metrics.values()]), *fresh])

    def sums(self, model, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each response's summed log-probs under `model` (the trainer's training forward, or its reference)."""
        kwargs = {"input_ids": x["input_ids"]}
        if "visible" in x:
            kwargs |= {
                "position_ids": x["position_ids"],
                "attention_mask": attention_mask(model, x["visible"], self.dtype),
            }
        with self.trainer.autocast(cache=False), shape_stable_attention():
            if supports_logits_to_keep(model):
                logits = model(**kwargs, logits_to_keep=x["keep"]).logits
            else:
                logits = torch.take_along_dim(model(**kwargs).logits, x["keep"][..., None], dim=1)
        scored = logits.flatten(0, 1).to(self.dtype)
        token_logp = -F.cross_entropy(scored, x["targets"].flatten(), ignore_index=IGNORE, reduction="none")
        n_responses = x["n_tokens"].shape[0]
        return token_logp.new_zeros(n_responses + 1).index_add_(0, x["owner"].flatten(), token_logp)[:n_responses]
