"""Callbacks that plug into the trainer: metrics logging, probing and checkpoints.

Each writes into the run directory and runs on the main process only.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ldyn.akg import decompose, parameters, update_directions
from ldyn.data.tokenize import collate
from ldyn.logprobs import SharedRows, shares_prompts
from ldyn.probing import ProbeItem, length_batches, probe, whole_prompt_batches
from ldyn.runs import DECOMPOSITION, DECOMPOSITION_TIMES, METRICS, PROBE_TIMES, PROBES, RunDir
from ldyn.trainer import StepState

STATE = "state.json"  # checkpoints/state.json: where to resume from


class MetricsLogger:
    """One row per update in metrics.jsonl, with the ids of the examples it trained on (`examples`)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_step_end(self, state: StepState) -> None:
        if state.accelerator.is_main_process:
            ids = [e.id for micro in state.batch for e in micro]
            self.run.append(METRICS, [{"step": state.step, "stage": state.stage, **state.metrics, "examples": ids}])


class ProbeCallback:
    """Probe at step 0, every `every` updates and at the end of each stage; rows go to probes.jsonl."""

    def __init__(
        self,
        run: RunDir,
        items: list[ProbeItem],
        pad_id: int,
        every: int,
        batch_tokens: int,
        done: set[int] = frozenset(),
    ):
        self.run, self.items, self.pad_id = run, items, pad_id
        self.every, self.batch_tokens, self.done = every, batch_tokens, set(done)

    def on_train_start(self, state: StepState) -> None:
        if state.step == 0:
            self.measure(state)

    def on_step_end(self, state: StepState) -> None:
        if self.every and (state.step % self.every == 0 or state.stage_step == state.stage_steps):
            self.measure(state)

    def measure(self, state: StepState) -> None:
        if not self.every or state.step in self.done or not state.accelerator.is_main_process:
            return
        started = time.perf_counter()
        records = probe(state.accelerator.unwrap_model(state.model), self.items, self.pad_id, self.batch_tokens)
        seconds = round(time.perf_counter() - started, 3)
        self.run.append(PROBES, [{"step": state.step, "stage": state.stage, **r} for r in records])
        self.run.append(PROBE_TIMES, [{"step": state.step, "seconds": seconds, "items": len(self.items)}])
        self.done.add(state.step)


class DecompositionCallback:
    """Decompose the update after step 0 and after every `every`-th step: the predicted (first-order A·K·G) and
    the observed change of log π(y | x_o) for every observed (example, response type), into decomposition.jsonl.

    Predictions (unless `predict` is off: then only the observed quantities) use three parameter steps from θ_t:
    the optimizer's real step ("predicted"), and the paper's SGD kernel −η·g split into its y⁺ part
    ("sgd_positive") and y⁻ part ("sgd_negative"). Runs in the model's own
    precision (no autocast) on the main process.
    """

    def __init__(
        self, run: RunDir, items: list[ProbeItem], pad_id: int, every: int, batch_tokens: int, predict: bool = True
    ):
        self.run, self.items, self.pad_id, self.every, self.batch_tokens = run, items, pad_id, every, batch_tokens
        self.predict, self.pending = predict, None

    def on_step_start(self, state: StepState) -> None:
        if not self.every or state.step % self.every or not state.accelerator.is_main_process:
            return
        started = time.perf_counter()
        trainer, model = state.trainer, state.accelerator.unwrap_model(state.model)
        examples = [e for micro in state.batch for e in micro]
        dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
        reference = trainer.reference_logps(examples, dtype) if trainer.loss.needs_reference else None
        directions = update_directions(model, trainer.loss, trainer.loss_cfg, examples, self.pad_id, reference)
        theta = {k: v.clone() for k, v in parameters(model).items()}
        self.pending = (theta, directions, trainer.lr_at(state.stage_step), time.perf_counter() - started)

    def on_step_end(self, state: StepState) -> None:
        if self.pending is None:
            return
        theta, directions, lr, seconds = self.pending
        self.pending = None
        started = time.perf_counter()
        model = state.accelerator.unwrap_model(state.model)
        after = parameters(model)
        tangents = {}
        if self.predict:
            tangents = {
                "step": {k: after[k] - theta[k] for k in theta},
                "sgd_positive": {k: -lr * g for k, g in directions.positive.items()},
            }
            if directions.negative is not None:
                tangents["sgd_negative"] = {k: -lr * g for k, g in directions.negative.items()}
        rows, device = [], next(model.parameters()).device
        shared = shares_prompts(device)
        for group in (whole_prompt_batches if shared else length_batches)(self.items, self.batch_tokens):
            pairs = [(it.example_id, it.prompt, it.response) for it in group]
            observed = SharedRows.of(pairs) if shared else collate([p[1:] for p in pairs], self.pad_id).to(device)
            out = {k: v.tolist() for k, v in decompose(model, theta, after, tangents, observed, self.pad_id).items()}
            for i, item in enumerate(group):
                row = {
                    "step": state.step,
                    "stage": state.stage,
                    "example_id": item.example_id,
                    "type": item.type,
                    "lr": lr,
                    "g_norm_sq": directions.g_norm_sq,
                }
                row |= {
                    k.replace("predicted/step", "predicted").replace("predicted/sgd_", "sgd_"): v[i]
                    for k, v in out.items()
                }
                row["observed/lbk"] = row["observed/dlogp_sq"] / (row["observed/a_norm_sq"] * directions.g_norm_sq)
                rows.append(row)
        self.run.append(DECOMPOSITION, rows)
        seconds += time.perf_counter() - started
        self.run.append(
            DECOMPOSITION_TIMES,
            [
                {
                    "step": state.step,
                    "seconds": round(seconds, 3),
                    "update_seconds": round(state.metrics["time/update_s"], 3),
                    "items": len(self.items),
                }
            ],
        )


class Checkpointer:
    """Resumable checkpoints: `last-<step>/` every `every` updates (model + optimizer), and at each stage's end
    the model as a Hugging Face checkpoint in `checkpoints/<stage>/` (usable as `model.name` of a later run)."""

    def __init__(self, run: RunDir, tokenizer, every: int):
        self.run, self.tokenizer, self.every = run, tokenizer, every

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
        tmp = root / f".{STATE}.tmp"
        tmp.write_text(json.dumps(resume, indent=2))
        tmp.replace(root / STATE)
        for old in root.glob("last-*"):  # only the newest periodic checkpoint is kept
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


def read_resume_state(run: RunDir) -> dict | None:
    path = run.checkpoints / STATE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    state["model_dir"] = Path(run.checkpoints / state["model"])
    return state
