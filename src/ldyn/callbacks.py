"""Callbacks that plug into the trainer: metrics logging, probing and checkpoints.

Each writes into the run directory and runs on the main process only.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ldyn.probing import ProbeItem, probe
from ldyn.runs import METRICS, PROBES, RunDir
from ldyn.trainer import StepState

STATE = "state.json"  # checkpoints/state.json: where to resume from


class MetricsLogger:
    """One row per update in metrics.jsonl."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_step_end(self, state: StepState) -> None:
        if state.accelerator.is_main_process:
            self.run.append(METRICS, [{"step": state.step, "stage": state.stage, **state.metrics}])


class ProbeCallback:
    """Probe at step 0, every `every` updates and at the end of each stage; rows go to probes.jsonl."""

    def __init__(self, run: RunDir, items: list[ProbeItem], pad_id: int, every: int, batch_tokens: int,
                 done: set[int] = frozenset()):
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
        self.run.append("probe_times.jsonl", [{"step": state.step, "seconds": seconds, "items": len(self.items)}])
        self.done.add(state.step)


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
        resume = {"step": state.step, "model": name, "optimizer": "optimizer.pt" if optimizer else None,
                  "stage_index": state.stage_index + int(next_stage),
                  "stage_step": 0 if next_stage else state.stage_step}
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
