"""Callbacks that plug into the trainer: metrics logging, probing and checkpoints.

Each writes into the run directory and runs on the main process only.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from itertools import zip_longest

import torch

from ldyn.dynamics.probing import ProbeItem, probe_across_ranks
from ldyn.dynamics.update import Decomposer
from ldyn.models.adapters import write_chain
from ldyn.runs.directory import DECOMPOSITION, DECOMPOSITION_TIMES, METRICS, PROBE_SET, PROBES, STATE, RunDir
from ldyn.runs.trackers import (
    PROBE_TABLE,
    TABLE_COLUMNS,
    Trackers,
    baseline_of,
    first_logps,
    probe_rows,
    probe_scalars,
    texts_of,
    train_scalars,
)
from ldyn.runs.watch import Watch, alert_text
from ldyn.runtime.distributed import gather_to_main
from ldyn.runtime.files import write_atomically
from ldyn.train.trainer import StepState


class MetricsLogger:
    """One row per update in metrics.jsonl (the metrics averaged over processes by the trainer), with the ids of the
    examples it trained on (`examples`, gathered from every process), and the metrics to the trackers."""

    def __init__(self, run: RunDir, trackers: Trackers | None = None):
        self.run, self.trackers = run, trackers or Trackers([])

    def on_step_end(self, state: StepState) -> None:
        shares = gather_to_main([[e.id for e in micro] for micro in state.batch])  # every process: a collective
        if not state.accelerator.is_main_process:
            return
        world = state.accelerator.num_processes
        ids = [
            i
            for m in range(len(state.batch))
            for part in zip_longest(*shares[m :: len(state.batch)])
            for i in part
            if i is not None
        ]
        self.run.append(METRICS, [{"step": state.step, "stage": state.stage, **state.metrics, "examples": ids}])
        self.trackers.log(train_scalars(state.metrics) | {"train/processes": world}, state.step)


class ProbeCallback:
    """Probe at step 0, every `every` updates and at the end of each stage; rows go to probes.jsonl. Under several
    processes each probes its share of the prompts and rank 0 writes them all (`probe_across_ranks`). The trackers
    get each round's scalars and its rows of the `probe/responses` table (texts from probe_set.jsonl); the
    diagnosis's new or changed findings are printed after each round and, with `alerts`, sent as alerts."""

    def __init__(
        self,
        run: RunDir,
        items: list[ProbeItem],
        pad_id: int,
        every: int,
        batch_tokens: int,
        done: set[int] = frozenset(),
        trackers: Trackers | None = None,
        alerts: bool = False,
    ):
        self.run, self.items, self.pad_id = run, items, pad_id
        self.every, self.batch_tokens, self.done = every, batch_tokens, set(done)
        self.trackers, self.baseline = trackers or Trackers([]), {}
        self.first: dict = {}  # each (prompt, type)'s first log π, for the table's Δ log π
        self.texts: dict | None = None  # probe_set.jsonl's texts, read at the first round a tracker takes
        self.watch, self.alerts = Watch(run.path), alerts  # the diagnosis after each round (`runs/watch.py`)

    def on_train_start(self, state: StepState) -> None:
        if state.step == 0:
            self.measure(state)

    def on_step_end(self, state: StepState) -> None:
        if self.every and (state.step % self.every == 0 or state.stage_step == state.stage_steps):
            self.measure(state)

    def measure(self, state: StepState) -> None:
        if not self.every or state.step in self.done:  # the same on every process: all or none take part
            return
        started = time.perf_counter()
        model = state.accelerator.unwrap_model(state.model)
        records = probe_across_ranks(model, self.items, self.pad_id, self.batch_tokens)
        self.done.add(state.step)
        if not state.accelerator.is_main_process:
            return
        self.run.append_probe_round(state.step, state.stage, records, time.perf_counter() - started, len(self.items))
        if not self.baseline and state.step > 0:  # resumed: changes are measured from the step-0 round
            self.baseline = baseline_of(self.run.read(PROBES))
        self.trackers.log(probe_scalars(records, self.baseline), state.step)
        if self.trackers.trackers:
            self.log_table(state.step, records)
        for finding in self.watch.after_round(state.step):  # printed; sent on when asked
            if self.alerts:
                self.trackers.alert(finding.title, alert_text(finding))

    def log_table(self, step: int, records: list[dict]) -> None:
        """This round's rows of the trackers' `probe/responses` table."""
        if self.texts is None:
            self.texts = texts_of(self.run.read(PROBE_SET))
        if not self.first and step > 0:  # resumed: changes are measured from the first round
            self.first = first_logps(self.run.read(PROBES))
        self.trackers.table(PROBE_TABLE, probe_rows(records, step, self.texts, self.first), TABLE_COLUMNS, step)


class DecompositionCallback:
    """Decompose the update after step 0 and after every `every`-th step (a `dynamics.update.Decomposer`): the
    predicted (first-order A·K·G) and the observed change of log π(y | x_o) for every observed (example, response
    type), into decomposition.jsonl.

    Predictions (unless `predict` is off: then only the observed quantities) use three parameter steps from θ_t: the
    optimizer's real step ("predicted"), and the paper's SGD kernel −η·g split into its y⁺ part ("sgd_positive") and
    y⁻ part ("sgd_negative"). g± come from the training step's own graph and gradient when they are exactly the
    batch's mean loss's (`StepState.step_graph` and one micro-batch: `on_forward_end`, `on_gradients`), else from a
    forward and backward of the update batch here; the readout's update side likewise comes from the training
    forward's own activations and G when it can read them (`Decomposer.readout_from_step`). In an RL update (its
    examples carry an `advantage`: `grpo.Completion`) the y⁺ part is the positive-advantage completions' and the y⁻
    part the others' (only from the step's graph: `grpo.check_sampled_stages` refuses the rest). Runs in the model's
    own precision (no autocast) on the main process; `method="readout"` runs on every process (each with its share
    of the update batch: `dynamics.readout`, whose forwards a sharded model needs every process in), and the main
    one writes.
    """

    def __init__(
        self,
        run: RunDir,
        items: list[ProbeItem],
        pad_id: int,
        *,
        every: int,
        batch_tokens: int,
        predict: bool = True,
        method: str = "jvp",
    ):
        self.run, self.every, self.seconds = run, every, 0.0
        self.decomposer = Decomposer(
            items, pad_id, method=method, predict=predict, batch_tokens=batch_tokens, every_update=every == 1
        )
        self.from_step = False  # this update's directions come from the training step (`on_forward_end`)

    def on_step_start(self, state: StepState) -> None:
        readout = self.decomposer.method == "readout"  # forward passes of its own: nothing from the step
        if not self.every or state.step % self.every or not (readout or state.accelerator.is_main_process):
            return
        started = time.perf_counter()
        model = state.accelerator.unwrap_model(state.model)
        self.from_step = state.step_graph and len(state.batch) == 1
        if self.from_step:
            self.decomposer.begin(model, state.lr)
            if readout:  # its update side from the training forward's activations (`on_forward_end`)
                self.decomposer.record_step(model)
        else:
            examples = [e for micro in state.batch for e in micro]
            reference = None
            if state.loss.needs_reference:
                dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
                reference = state.reference_logps(examples, dtype)
            self.decomposer.begin(
                model, state.lr, loss=state.loss, loss_cfg=state.loss_cfg, examples=examples, reference=reference
            )
        self.seconds = time.perf_counter() - started

    def on_forward_end(self, state: StepState) -> None:
        if self.decomposer.pending is None or not self.from_step:
            return
        started = time.perf_counter()
        step = state.forward
        model = state.accelerator.unwrap_model(state.model)
        if self.decomposer.method == "readout":
            if not self.decomposer.readout_from_step(model, step.loss, step.logps, step.examples):
                reference = None  # the step's forward was not the readout's layout: a forward of its own
                if state.loss.needs_reference:
                    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)  # as on_step_start
                    reference = state.reference_logps(step.examples, dtype)
                self.decomposer.readout_update(model, state.loss, state.loss_cfg, step.examples, reference)
            self.seconds += time.perf_counter() - started
            return
        advantages = [getattr(e, "advantage", None) for e in step.examples]  # an RL update's rollouts: A > 0 is y⁺
        positive = None if None in advantages else torch.tensor([a > 0 for a in advantages])
        self.decomposer.directions_from_step(model, step.loss, step.logps, len(step.examples), positive)
        self.seconds += time.perf_counter() - started

    def on_gradients(self, state: StepState) -> None:
        if not self.decomposer.awaiting_gradient:
            return
        started = time.perf_counter()
        model = state.accelerator.unwrap_model(state.model)
        grads = {
            n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters() if p.requires_grad
        }
        self.decomposer.directions_from_gradient(grads)
        self.seconds += time.perf_counter() - started

    def on_step_end(self, state: StepState) -> None:
        if self.decomposer.pending is None:
            return
        started = time.perf_counter()
        rows = self.decomposer.finish(state.accelerator.unwrap_model(state.model))
        if not state.accelerator.is_main_process:  # the readout runs on every process, with the same rows
            return
        self.run.append(DECOMPOSITION, [{"step": state.step, "stage": state.stage, **row} for row in rows])
        seconds = self.seconds + time.perf_counter() - started
        timing = {
            "step": state.step,
            "seconds": round(seconds, 3),
            "items": len(self.decomposer.items),
            "update_seconds": round(state.metrics["time/update_s"], 3),
        }
        self.run.append(DECOMPOSITION_TIMES, [timing])


class Checkpointer:
    """Resumable checkpoints: `last-<step>/` every `every` updates (model + optimizer), and at each stage's end
    the model as a Hugging Face checkpoint in `checkpoints/<stage>/` (usable as `model.name` of a later run). A LoRA
    run saves its adapter, with the chain of earlier adapters it applies after (`models/adapters.py`)."""

    def __init__(self, run: RunDir, tokenizer, every: int, chain: Callable[[int], dict] | None = None):
        self.run, self.tokenizer, self.every, self.chain = run, tokenizer, every, chain  # chain: LoRA runs

    def on_step_end(self, state: StepState) -> None:
        if self.every and state.step % self.every == 0 and state.stage_step < state.stage_steps:
            self.save(state, f"last-{state.step:06d}", optimizer=True)

    def on_train_end(self, state: StepState) -> None:
        self.save(state, state.stage, optimizer=False, next_stage=True)

    def save(self, state: StepState, name: str, optimizer: bool, next_stage: bool = False) -> None:
        if not state.accelerator.is_main_process:
            return
        root = self.run.checkpoints
        target, partial = root / name, root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        state.accelerator.unwrap_model(state.model).save_pretrained(partial)
        self.tokenizer.save_pretrained(partial)
        if self.chain is not None:
            write_chain(partial, self.chain(state.stage_index))
        if optimizer:
            torch.save(state.optimizer.state_dict(), partial / "optimizer.pt")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        resume = {
            "step": state.step,
            "model": name,
            "optimizer": "optimizer.pt" if optimizer else None,
            "stage_index": state.stage_index + int(next_stage),
            "stage_step": 0 if next_stage else state.stage_step,
        }
        write_atomically(root / STATE, json.dumps(resume, indent=2))
        for old in root.glob("last-*"):  # only the newest periodic checkpoint is kept
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
