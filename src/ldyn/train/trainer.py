"""The training loop: optimizer, warmup, clipping, gradient accumulation, and the callback events.

The trainer knows nothing about probing, decomposition, logging or checkpoints: those are callbacks, objects with
any of `on_train_start`, `on_step_start` (before the update: the model is still θ_t and the batch is known),
`on_forward_end` (a micro-batch's loss and row log-probs, before its backward: `StepState.forward`),
`on_gradients` (the gradient, before it is clipped and applied), `on_step_end` (after the update: the model is
θ_{t+1}) and `on_train_end`, each given the `StepState`.

Devices and processes come from accelerate's `Accelerator` (placement, DDP, backward, clipping). Mixed precision
is applied here with an explicit autocast around the training forward only -- accelerate's own would also wrap the
forward used by probes, which must stay in fp32. Likewise `compile` compiles the training forward alone
(`models.modes.compiled`, over the model's own parameters): the instruments keep the eager model, whose forward they
differentiate in forward mode or run with other parameters. With `cuda_graphs` each batch shape's forward and
backward is recorded once as a CUDA graph and replayed (`graphs.GraphedUpdate`); the rest of the update stays here.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ldyn.config import OptimConfig, StageConfig
from ldyn.data.tokenize import TokenizedRow, collate_pairs
from ldyn.errors import LdynError
from ldyn.logprobs.choose import packs_training_rows
from ldyn.logprobs.packed import packed_logps
from ldyn.logprobs.padded import scored_logps
from ldyn.logprobs.tokens import SeqLogps
from ldyn.losses import LossConfig, LossSpec, PairLogps
from ldyn.models.modes import compiled, shape_stable_attention
from ldyn.train.graphs import GraphedUpdate


def _fusable(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: plain floating tensors on a CPU or CUDA device
    (not sharded DTensors). One kernel over all of them, without the foreach path's temporaries: 0.08 against 0.25 s
    for SmolLM2's 135M parameters on this CPU, ~0.5 s less per DPO update in a paired A/B (docs/benchmarks.md)."""
    return bool(params) and all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


OPTIMIZERS = {  # the names OptimConfig.name allows
    "adamw": lambda params, c: torch.optim.AdamW(
        params, lr=c.lr, weight_decay=c.weight_decay, fused=_fusable(params) or None
    ),
    "rmsprop": lambda params, c: torch.optim.RMSprop(params, lr=c.lr, weight_decay=c.weight_decay, momentum=c.momentum),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay, momentum=c.momentum),
}


class Diverged(LdynError):
    """A non-finite loss or gradient norm: training stops before the update that would write it into θ."""


@dataclass
class TrainExample:
    id: str
    prompt: list[int]  # x token ids
    chosen: list[int]  # y⁺ (or the SFT target) token ids, EOS included
    rejected: list[int] | None  # y⁻ token ids, or None for SFT examples


def stage_examples(rows: list[TokenizedRow], spec: LossSpec, stage: StageConfig) -> list[TrainExample]:
    """Pairs for preference losses (a response the stage samples may be absent: None until sampled); for SFT the
    stage's target field, plus the rejected ones when `extend`; for a sampled loss the prompts alone."""
    if spec.sampled:
        return [TrainExample(r.id, r.prompt, [], None) for r in rows]
    if spec.needs_rejected:
        return [TrainExample(r.id, r.prompt, r.responses.get("chosen"), r.responses.get("rejected")) for r in rows]
    examples = [TrainExample(r.id, r.prompt, r.responses[stage.target], None) for r in rows]
    if stage.extend:
        examples += [TrainExample(f"{r.id}/rejected", r.prompt, r.responses["rejected"], None) for r in rows]
    return examples


@dataclass
class StepForward:
    """A micro-batch's forward at `on_forward_end`, still attached to its graph: an instrument may differentiate it
    (its backward keeps the graph for the step's own backward)."""

    loss: torch.Tensor  # the micro-batch's mean loss (its backward takes it divided by the number of micro-batches)
    logps: SeqLogps  # its rows' log-probs, chosen (or the SFT target) first, then rejected, with their logits
    examples: list[TrainExample]


@dataclass
class StepState:
    """What callbacks see. `step` counts updates over all stages; `stage_step` within the current stage."""

    step: int
    stage: str
    stage_index: int
    stage_step: int
    stage_steps: int
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    accelerator: object
    loss: LossSpec | None = None  # the stage's loss and its settings
    loss_cfg: LossConfig | None = None
    reference_logps: Callable[[list[TrainExample], torch.dtype], PairLogps] | None = None  # cached reference
    lr: float = 0.0  # the learning rate of the update about to be taken (on_step_start) or just taken
    batch: list[list[TrainExample]] = field(default_factory=list)  # micro-batches of the current update
    metrics: dict[str, float] = field(default_factory=dict)  # of the last update
    # one process, no autocast, an eager forward: at on_forward_end an instrument may differentiate the step's graph
    # before the step's own backward (inductor's compiled backward, run after one that kept the graph, gave wrong
    # gradients), and at on_gradients the parameters' .grad is exactly the gradient of the batch's mean loss, to use
    # in place of a backward of its own
    step_graph: bool = False
    forward: StepForward | None = None  # at on_forward_end only


def batches(
    examples: list[TrainExample], batch_size: int, seed: int, skip: int = 0, rank: int = 0, world: int = 1
) -> Iterator[list[TrainExample]]:
    """Endless batches over passes of the data, each pass reshuffled (seeded by seed and pass number).

    Training length is a number of updates, not epochs, as in the paper's code. `skip` batches are dropped first
    (resuming), and each process keeps its share `[rank::world]` of every global batch.
    """

    def stream():
        epoch = 0
        while True:
            order = list(range(len(examples)))
            random.Random(f"{seed}/{epoch}").shuffle(order)
            yield from order
            epoch += 1

    items = stream()
    for _ in range(skip * batch_size):
        next(items)
    while True:
        batch = [examples[next(items)] for _ in range(batch_size)]
        yield batch[rank::world]


class Trainer:
    def __init__(
        self,
        model,
        loss: LossSpec,
        loss_cfg: LossConfig,
        optim_cfg: OptimConfig,
        *,
        accelerator,
        pad_id: int,
        ref_model=None,
        callbacks=(),
        grad_accum: int = 1,
        mixed_precision: str = "no",
        compile: str = "no",
        cuda_graphs: int = 0,
        objective=None,
    ):
        if loss.needs_reference and ref_model is None:
            raise ValueError(f"loss '{loss.name}' needs a reference model")
        self.model, self.loss, self.loss_cfg, self.optim_cfg = model, loss, loss_cfg, optim_cfg
        self.accelerator, self.pad_id, self.ref_model = accelerator, pad_id, ref_model
        self.callbacks, self.grad_accum = list(callbacks), grad_accum
        # `objective(trainer, examples) -> (loss, metrics, logps)` in place of `loss` over the rows' summed log-probs:
        # a sampled stage's token objective (`grpo.GRPO`), its rows the completions it sampled
        self.objective = objective
        self.autocast_dtype = torch.bfloat16 if mixed_precision == "bf16" else None
        self.forward_model = compiled(model, compile)  # the model itself unless compiling
        # the training forward's row layout, chosen once: packed rows or one padded batch
        self.packs_rows = packs_training_rows(model, accelerator.device, accelerator.num_processes)
        self.graphed = None  # with cuda_graphs (a bucket of N tokens): each length's update recorded and replayed
        if cuda_graphs:
            if compile != "no" or grad_accum != 1 or accelerator.num_processes != 1:
                raise LdynError(
                    f"replays one process's whole update: it needs compile=no (got {compile}), "
                    f"grad_accum=1 (got {grad_accum}) and one process (got {accelerator.num_processes})",
                    field="cuda_graphs",
                )
            self.graphed = GraphedUpdate(self, cuda_graphs)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = accelerator.prepare_optimizer(OPTIMIZERS[optim_cfg.name](params, optim_cfg))
        self.reference_cache: dict[str, tuple[float, float]] = {}  # example id -> (log π_ref(y⁺), log π_ref(y⁻))
        self.hook_seconds = 0.0  # callbacks' time inside the last update (its events), not counted as its own

    def fit(
        self,
        data: Iterator[list[TrainExample]],
        steps: int,
        *,
        stage: str = "train",
        stage_index: int = 0,
        step: int = 0,
        start: int = 0,
    ) -> StepState:
        """Run updates `start..steps-1` of this stage; `step` is the global update count before the first."""
        state = StepState(
            step,
            stage,
            stage_index,
            start,
            steps,
            self.model,
            self.ref_model,
            self.optimizer,
            self.accelerator,
            self.loss,
            self.loss_cfg,
            self.reference_logps,
        )
        state.step_graph = (
            self.accelerator.num_processes == 1
            and self.autocast_dtype is None
            and self.forward_model is self.model
            and self.graphed is None
        )
        self._emit("on_train_start", state)
        bar = tqdm(
            range(start, steps),
            desc=stage,
            initial=start,
            total=steps,
            unit="update",
            disable=not self.accelerator.is_main_process,
            dynamic_ncols=True,
        )
        for _ in bar:
            state.batch = [next(data) for _ in range(self.grad_accum)]
            state.lr = self.lr_at(state.stage_step)
            self._emit("on_step_start", state)
            started = time.perf_counter()
            try:
                state.metrics = self.update(state.batch, state.stage_step, state)
            except Diverged as e:
                raise Diverged(f"stage {stage}, step {state.step + 1}: {e.message}") from None
            seconds = time.perf_counter() - started - self.hook_seconds
            n_examples = sum(len(b) for b in state.batch) * self.accelerator.num_processes
            state.metrics |= {"time/update_s": seconds, "examples_per_s": n_examples / seconds}
            state.step += 1
            state.stage_step += 1
            bar.set_postfix(loss=f"{state.metrics['loss']:.4g}")
            self._emit("on_step_end", state)
            self.accelerator.wait_for_everyone()
        self._emit("on_train_end", state)
        return state

    def lr_at(self, t: int) -> float:
        """Linear warmup min(1, (t+1)/(warmup+1)) as in the paper's code, then constant."""
        return self.optim_cfg.lr * min(1.0, (t + 1) / (self.optim_cfg.warmup_steps + 1))

    def update(self, micro_batches: list[list[TrainExample]], t: int, state: StepState | None = None) -> dict:
        """Update number `t` of the stage over the micro-batches; returns the averaged metrics. With `state`,
        callbacks see each micro-batch's forward before its backward (`on_forward_end`) and the gradient before it
        is clipped and applied (`on_gradients`); their time there is not the update's (`hook_seconds`)."""
        totals: dict[str, float] = {"lr": self.lr_at(t)}
        for group in self.optimizer.param_groups:
            group["lr"] = totals["lr"]
        self.hook_seconds = 0.0
        for i, examples in enumerate(micro_batches):
            if self.graphed is not None:  # one micro-batch (checked when built), its forward kept by no graph
                metrics = self.graphed.forward_backward(examples)
            else:
                metrics = self.forward_backward(examples, len(micro_batches), i == len(micro_batches) - 1, state)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v / len(micro_batches)
        if state is not None:
            self._emit_timed("on_gradients", state)
        max_norm = self.optim_cfg.max_grad_norm if self.optim_cfg.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        totals = self.mean_over_processes(totals)  # the same on every process, so all stop or none
        if not (math.isfinite(totals["loss"]) and math.isfinite(float(grad_norm))):  # before the step: θ stays finite
            self.optimizer.zero_grad(set_to_none=True)
            raise Diverged(
                f"the loss is {totals['loss']} and the gradient norm {float(grad_norm)}; stopped before "
                "applying the update (the last checkpoint is finite: lower the learning rate or check the "
                "data, then `ldyn resume`)"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return totals | {"grad_norm": float(grad_norm)}

    def mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each process measured its share of the batch; equal shares make the mean of their means the batch's."""
        if self.accelerator.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        return dict(zip(keys, self.accelerator.reduce(values, reduction="mean").tolist()))

    def forward_backward(self, examples: list[TrainExample], n_micro: int, last: bool, state: StepState | None):
        """One of `n_micro` micro-batches: its forward, `on_forward_end`, and the backward of its share of the
        loss (gradients synchronised across processes on the `last` only); returns its metrics."""
        with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
            loss, metrics, logps = self.loss_on(examples)
            if state is not None:
                state.forward = StepForward(loss, logps, examples)
                self._emit_timed("on_forward_end", state)
                state.forward = None  # the logits are not kept through the backward
            del logps
            self.accelerator.backward(loss / n_micro)
        return metrics

    def loss_on(self, examples: list[TrainExample]) -> tuple[torch.Tensor, dict[str, float], SeqLogps]:
        """Mean loss of a micro-batch (chosen and rejected together, `row_logps`), its metrics and its rows'
        log-probs."""
        if self.objective is not None:
            return self.objective(self, examples)
        logps = self.row_logps(self.model, examples, self.loss.needs_rejected)
        reference = self.reference_logps(examples, logps.sum.dtype) if self.loss.needs_reference else None
        loss, metrics = self.loss_from(logps.sum, logps.n_tokens, len(examples), reference)
        values = torch.stack([v.to(loss.dtype) for v in metrics.values()]).tolist()
        return loss, dict(zip(metrics, values)), logps

    def loss_from(
        self, sums: torch.Tensor, n_tokens: torch.Tensor, n_examples: int, reference: PairLogps | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss of a micro-batch from its rows' summed log-probs (`collate_pairs` order) and its metrics,
        as 0-d tensors (read together: one wait for the device)."""
        policy = PairLogps.from_rows(sums, n_tokens, n_examples)
        out = self.loss.fn(policy, reference, self.loss_cfg)
        loss = out.losses.mean()
        metrics = {"loss": loss.detach(), "logps/chosen": policy.chosen.detach().mean()}
        if policy.rejected is not None:
            metrics["logps/rejected"] = policy.rejected.detach().mean()
            metrics["logps/margin"] = (policy.chosen - policy.rejected).detach().mean()
        metrics |= {k: v.detach().float().mean() for k, v in out.metrics.items()}
        return loss, metrics

    @torch.no_grad()
    def reference_logps(self, examples: list[TrainExample], dtype: torch.dtype) -> PairLogps:
        """Reference log-probs, computed once per example and cached: the reference never changes."""
        todo = [e for e in examples if e.id not in self.reference_cache]
        if todo:  # in the policy's precision, so that the margins are exactly 0 at the start
            logps = self.row_logps(self.ref_model, todo, with_rejected=True).sum.tolist()
            for i, e in enumerate(todo):
                self.reference_cache[e.id] = (logps[i], logps[len(todo) + i])
        device = self.accelerator.device
        chosen, rejected = zip(*(self.reference_cache[e.id] for e in examples))
        n = [len(e.chosen) for e in examples], [len(e.rejected) for e in examples]
        return PairLogps(
            torch.tensor(chosen, dtype=dtype, device=device),
            torch.tensor(rejected, dtype=dtype, device=device),
            torch.tensor(n[0], device=device),
            torch.tensor(n[1], device=device),
        )

    def row_logps(self, model, examples: list[TrainExample], with_rejected: bool) -> SeqLogps:
        """Summed log-probs of the update's rows, chosen (or the SFT target) first, then rejected.

        On a CPU the rows are packed (`packed.packed_logps`): each prompt once for all its responses, no padding,
        the vocabulary projected only where a token is scored (`packs_rows`, chosen once). Rows on a GPU (one padded
        pass is fastest there), under several processes (DDP expects one forward per backward) or of a model that
        takes no packed row run as one padded batch (`collate_pairs`), still projected only at scored positions
        (`scored_logps`). With `compile` the model runs its compiled forward.
        """
        device = self.accelerator.device
        plain = self.forward_model if model is self.model else model
        with self.autocast(), shape_stable_attention():
            if self.packs_rows:
                responses = [(i, e.chosen) for i, e in enumerate(examples)]
                if with_rejected:
                    responses += [(i, e.rejected) for i, e in enumerate(examples)]
                return packed_logps(plain, [e.prompt for e in examples], responses)
            return scored_logps(plain, collate_pairs(examples, self.pad_id, with_rejected).to(device))

    def autocast(self, cache: bool = True):
        """bf16 autocast around training forwards when mixed precision is on; a no-op otherwise. `cache=False`
        recasts the weights in every forward (what a CUDA graph's capture needs)."""
        return torch.autocast(
            self.accelerator.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
            cache_enabled=cache,
        )

    def _emit_timed(self, event: str, state: StepState) -> None:
        """`_emit` inside an update, its time added to `hook_seconds`."""
        started = time.perf_counter()
        self._emit(event, state)
        self.hook_seconds += time.perf_counter() - started

    def _emit(self, event: str, state: StepState) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(state)
