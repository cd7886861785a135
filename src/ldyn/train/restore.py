"""What `ldyn resume` loads back before it touches the run directory: the resume state, the checkpoint's model,
its optimizer state and (resuming a full finetuning mid-stage) the stage's frozen reference.

Every fault -- a state.json that is not the Checkpointer's, a checkpoint that misses a file or is damaged, an
optimizer state of another model, a config.yaml changed in what was trained (`runs/resume_policy.py`) -- is one
line naming the file, raised here, before the lock is taken or any row is cut back.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ldyn.config import RunConfig
from ldyn.errors import LdynError
from ldyn.models.load import check_checkpoint, load_checkpoint, load_model
from ldyn.models.pretrained import reason
from ldyn.runs.directory import RESTART, STATE, RunDir, read_resume_state
from ldyn.runs.resume_policy import check_unchanged, trained_config


@dataclass
class Restored:
    model: object
    tokenizer: object
    state: dict | None  # the Checkpointer's state.json, or None: the run starts again from step 0
    optimizer: dict | None = None  # the optimizer's state, resuming mid-stage
    reference: object | None = None  # the stage's starting model, resuming a full finetuning mid-stage


def restore(run: RunDir, cfg: RunConfig) -> Restored:
    """The model (and what else resuming needs) that `run` continues from under `cfg`, its config.yaml."""
    state, trained = read_resume_state(run), trained_config(run)
    adapter = bool((trained or cfg).model.peft.r)  # what the checkpoints hold: adapters or whole models
    if state is not None:  # missing files first: they are what a copied or cleaned-up run lacks
        check_checkpoint(state["model_dir"], adapter, cfg.seed)
    check_unchanged(run, trained, cfg)
    if state is None:
        return Restored(*load_model(cfg.model, cfg.seed), None)
    _check_fits(state, cfg, run.checkpoints / STATE)
    middle = state["stage_step"] > 0
    model, tokenizer = load_checkpoint(
        state["model_dir"], cfg.model, cfg.seed, adapter=adapter, trainable=adapter and middle
    )
    restored = Restored(model, tokenizer, state)
    if middle and state["optimizer"]:
        restored.optimizer = _optimizer_state(state["model_dir"] / state["optimizer"], model)
    stage_index = state["stage_index"]
    if middle and not adapter and cfg.stages[stage_index].has_reference:
        restored.reference = _stage_start(run, cfg, stage_index)
    return restored


def _check_fits(state: dict, cfg: RunConfig, path: Path) -> None:
    """The state's stage and step lie within the config's stages."""
    index, step, stages = state["stage_index"], state["stage_step"], cfg.stages
    if index > len(stages) or (step > 0 and index == len(stages)):
        what = f"stage {index} is past the run's {len(stages)} stages"
        raise LdynError(f"{what}; {RESTART}", file=str(path), field="stage_index")
    if step > 0 and step >= stages[index].steps:
        what = f"update {step} is past the end of stage '{stages[index].name}' ({stages[index].steps} updates)"
        raise LdynError(f"{what}; {RESTART}", file=str(path), field="stage_step")


def _optimizer_state(path: Path, model) -> dict:
    """The saved optimizer state, checked against the model's trainable parameters (their number and shapes)."""
    try:
        saved = torch.load(path)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        what = f"cannot read the optimizer state ({reason(e).split('. ')[0]}): it is damaged"
        raise LdynError(f"{what}; {RESTART}", file=str(path)) from None
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        ids = [i for group in saved["param_groups"] for i in group["params"]]
        shapes = {i: v.shape for i, s in saved["state"].items() for v in s.values() if torch.is_tensor(v) and v.dim()}
    except (TypeError, KeyError, AttributeError):
        raise LdynError(f"is not an optimizer state; {RESTART}", file=str(path)) from None
    wrong = len(ids) != len(params) or any(i in shapes and shapes[i] != p.shape for i, p in zip(ids, params))
    if wrong:
        raise LdynError(f"does not fit the checkpoint's model (another run's file?); {RESTART}", file=str(path))
    return saved


def _stage_start(run: RunDir, cfg: RunConfig, stage_index: int):
    """The model at the start of stage `stage_index`: the config's model, or the previous stage's checkpoint."""
    if stage_index == 0:
        return load_model(cfg.model, cfg.seed)[0]
    folder = run.checkpoints / cfg.stages[stage_index - 1].name
    return load_checkpoint(folder, cfg.model, cfg.seed, adapter=False)[0]
