"""`run(cfg)`: train through the config's stages while probing, into a run directory. The CLI's `ldyn run`.

Order matters for users: everything that can fail on bad input (config, data files, probe types, model name) is
checked before the run directory is touched, so a mistake never costs what an earlier run wrote.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator

from ldyn import __version__
from ldyn.config import RunConfig, StageConfig, check, dump_config, read_config
from ldyn.data.formats import load_examples
from ldyn.data.probesets import load_probe_set, probe_set_rows
from ldyn.data.tokenize import TokenizedRow, tokenize_examples
from ldyn.dynamics.probing import ProbeItem, first_prompts, tokenized_probe_items
from ldyn.errors import LdynError, did_you_mean
from ldyn.losses import get_loss
from ldyn.models.adapters import AdapterOff, chain_for, has_adapter, new_adapter
from ldyn.models.load import load_model
from ldyn.models.pretrained import frozen_copy
from ldyn.runs.directory import CONFIG, DATA, PROBE_SET, TRAINED, TRAINER_ARGS, RunDir, finished
from ldyn.runs.resume_policy import check_unchanged, trained_config
from ldyn.runs.trackers import Trackers, open_trackers
from ldyn.runtime import distributed
from ldyn.runtime.files import writable_folder
from ldyn.schema import to_dict
from ldyn.train import rollout_probes
from ldyn.train.callbacks import Checkpointer, DecompositionCallback, MetricsLogger, ProbeCallback
from ldyn.train.grpo import GRPO, check_reward_fields, check_sampled_stages, rows_by_id
from ldyn.train.restore import restore
from ldyn.train.sampling import ResponseSampler
from ldyn.train.task_data import resolve
from ldyn.train.trainer import Trainer, batches, stage_examples


@dataclass
class Inputs:
    train: list[TokenizedRow]  # responses: every field the rows have (the stages' needs are checked at load)
    probes: list[ProbeItem]
    report: dict  # what was loaded, for data.json and the console
    texts: list[dict]  # the probed texts, for probe_set.jsonl (`probe_set_rows`)
    rows: dict[str, dict] = field(default_factory=dict)  # with a sampled stage: each training row by id (rewards)


@dataclass
class _Shared:
    """What every stage of one run trains with."""

    cfg: RunConfig
    out: RunDir
    tokenizer: object
    inputs: Inputs
    accelerator: Accelerator
    callbacks: list
    graphs: int  # the trainer's `cuda_graphs` (0: off)


def load_inputs(cfg: RunConfig, tokenizer, model=None, kept: dict | None = None) -> Inputs:
    """The training rows and the probe items; with a sampled stage or `probe.held_out`, the probe responses sampled
    from `model` (the step-0 model), or those a resumed run `kept` in its data.json (`rollout_probes.py`)."""
    data, pcfg = cfg.data, cfg.probe
    needs = {}
    for stage in cfg.stages:  # the fields every row needs, each with the first stage that needs it
        needs = stage.needs() | needs
    key = "probe.path" if data.train == "probe" else "data.train"  # train on the probe set (train_using_prob)
    source = resolve(pcfg.path if data.train == "probe" else data.train, key)  # a generated task: its rows
    examples, skipped = load_examples(source, data.split, data.n_train, needs, data.skip_empty, cfg.seed)
    keep = {"chosen", "rejected", *needs}  # other fields would change how long rows are truncated
    examples = [replace(e, responses={k: v for k, v in e.responses.items() if k in keep}) for e in examples]
    train = tokenize_examples(tokenizer, examples, data)
    items, texts = [], []
    loaded = {"probe_prompts": 0, "probe_types": [], "probe_empty_skipped": 0, "probe_truncated": 0}
    if pcfg.every or cfg.decompose.every:
        n, key = (pcfg.n, "probe.n") if pcfg.every else (cfg.decompose.n, "decompose.n")  # decomposing alone: its n
        path = resolve(pcfg.path, "probe.path")
        types, rollout_types = rollout_probes.requested(cfg)  # those in the file, those sampled
        probed, types = load_probe_set(path, types, n, cfg.seed, key)
        probed, types, kept = rollout_probes.add_sampled(cfg, path, probed, types, rollout_types, n, tokenizer, model,
                                                         kept)  # fmt: skip
        items, loaded = tokenized_probe_items(probed, types, tokenizer, data)
        texts = probe_set_rows(probed, types)
        loaded |= kept
        if kept.get("held_out"):  # rows of their own, one per sample: told apart from the probed prompts
            loaded["probe_held_out_samples"] = len(kept["held_out"])
            loaded["probe_prompts"] -= len(kept["held_out"])
            loaded["probe_empty_skipped"] -= len(kept["held_out"]) * (len(types) - 1)  # they have one type only
    report = {
        "train_pairs": len(train),
        "train_skipped_empty": skipped,
        "train_truncated": sum(r.truncated for r in train),
    } | loaded
    rows = {}
    if any(get_loss(s.loss.name).sampled for s in cfg.stages):
        rows = rows_by_id(source, data.split, cfg.seed, data.n_train)
        check_reward_fields(cfg, rows)
    return Inputs(train, items, report, texts, rows)


def run(cfg: RunConfig, *, overwrite: bool = False) -> RunDir:
    """Start a new run of `cfg`; returns its run directory. Everything that can be refused is refused before the
    directory is touched; the run holds the directory's lock for its whole life."""
    check(cfg)
    out, processes = RunDir(cfg.run_dir), distributed.processes()  # under accelerate launch: every process runs this
    check_sampled_stages(cfg, processes.num_processes)
    existed = out.exists()
    processes.wait_for_everyone()  # every process looked before the main one writes
    check_output_dir(out, existed, overwrite)
    model, tokenizer = load_model(cfg.model, cfg.seed)
    if cfg.model.peft.r:  # the first stage's adapter, attached before anything is written (bad target modules)
        model = new_adapter(model, cfg.model.peft, cfg.seed * 1000)
    inputs = load_inputs(cfg, tokenizer, model)
    if processes.is_main_process:
        out.lock()  # held for the run's life (released by the OS if the process dies): a second writer is refused
    try:
        if processes.is_main_process:
            if overwrite and out.path.exists():
                shutil.rmtree(out.path)
            out.write_text(CONFIG, f"# ldyn {__version__}\n" + dump_config(cfg))
            frozen = f"# ldyn {__version__}: the config this run was trained under (`ldyn resume` checks config.yaml)\n"
            out.write_text(TRAINED, frozen + dump_config(cfg))
            out.write_json(DATA, inputs.report)
            out.rewrite(PROBE_SET, inputs.texts)
        processes.wait_for_everyone()
        return _train(cfg, out, model, tokenizer, inputs, resume=None)
    finally:
        out.unlock()


def check_output_dir(out: RunDir, existed: bool, overwrite: bool) -> None:
    """Refuse an output_dir that is a file, that holds a run (without --overwrite), or that --overwrite would
    delete without it being an ldyn run directory (a folder of other files, the working directory, a parent)."""
    path = out.path
    if path.exists() and not path.is_dir():
        raise LdynError("output_dir is a file, not a folder", file=str(path))
    writable_folder(path, "output_dir")  # a file where one of its folders should be, a folder not writable
    if existed and not overwrite:
        raise LdynError(
            f"already holds a run: continue it with `ldyn resume {path}`, replace it with --overwrite, "
            "or choose another output_dir",
            file=str(path),
        )
    if overwrite and path.exists():
        here = Path.cwd().resolve()
        if path.resolve() in (here, *here.parents, Path.home().resolve()):
            raise LdynError(
                "--overwrite would delete the working directory, a folder above it or the home folder", file=str(path)
            )
        if any(path.iterdir()) and not out.is_run():
            message = (
                "--overwrite replaces ldyn run directories only, and this folder is not one (it has no "
                "config.yaml); delete it yourself or choose another output_dir"
            )
            raise LdynError(message, file=str(path))


def decompose_step(cfg: RunConfig, stage: str | None = None, *, overwrite: bool = False) -> RunDir:
    """One update of one stage (default: the first), decomposed against the probe set: `ldyn decompose`.

    The update batch is the stage's first batch (`data.n_train` = the batch size makes it exactly the first
    pairs of the file); the observed set is the first `decompose.n` probe prompts with all their response types.
    """
    names = [s.name for s in cfg.stages]
    name = stage or names[0]
    if name not in names:
        raise LdynError(f"unknown stage '{name}'{did_you_mean(name, names)}", field="--stage")
    picked = next(s for s in cfg.stages if s.name == name)
    cfg = replace(
        cfg,
        stages=[replace(picked, steps=1)],
        probe=replace(cfg.probe, every=0),
        decompose=replace(cfg.decompose, every=1),
        output_dir=cfg.output_dir or f"runs/{cfg.name}-decompose",
    )
    return run(cfg, overwrite=overwrite)


def resume(run_dir: str) -> RunDir:
    """Continue a run from its last checkpoint (or from the start, keeping what it wrote before), under its
    config.yaml as long as that changed nothing that was trained or measured (`runs/resume_policy.py`). Every fault
    is refused before the directory is touched (`restore.py`)."""
    out = RunDir(run_dir)
    if not out.exists():
        raise LdynError("nothing to resume: not a run directory", file=run_dir)
    if (out.path / TRAINER_ARGS).is_file():
        raise LdynError(
            "was written by LearningDynamicsCallback inside another trainer, which ldyn cannot continue: resume that "
            "training with trainer.train(resume_from_checkpoint=...), and the callback continues this folder",
            file=run_dir,
        )
    cfg = read_config(out.path / CONFIG)
    check(cfg)
    check_sampled_stages(cfg, distributed.processes().num_processes)
    if finished(out, cfg):
        return _redraw(out, cfg)
    restored = restore(out, cfg)
    model, tokenizer, state = restored.model, restored.tokenizer, restored.state
    if state is not None:  # the resumed stage takes them (and lets them go)
        state = state | {"optimizer_state": restored.optimizer, "reference": restored.reference}
    del restored
    kept = json.loads((out.path / DATA).read_text()) if (out.path / DATA).is_file() else {}
    inputs = load_inputs(cfg, tokenizer, kept=kept)  # the step-0 samples it probes, never the restored model's
    processes = distributed.processes()
    if processes.is_main_process:
        out.lock()
    try:
        if processes.is_main_process:
            if not (out.path / PROBE_SET).is_file():  # a run from before ldyn kept its probed texts
                out.rewrite(PROBE_SET, inputs.texts)
            out.rewind(state["step"] if state else 0)  # rows after the checkpoint, and a probe round cut short by
        processes.wait_for_everyone()  # the kill, are taken again
        return _train(cfg, out, model, tokenizer, inputs, resume=state)
    finally:
        out.unlock()


def _redraw(out: RunDir, cfg: RunConfig) -> RunDir:
    """A finished run has nothing to train: its figures are drawn again from its rows (a kill while they were
    drawn is the one thing left to finish), which needs no checkpoint weights."""
    check_unchanged(out, trained_config(out), cfg)
    if distributed.processes().is_main_process:  # one process draws; the lock refuses another writer
        out.lock()
        print(f"ldyn: {out.path} finished all its {len(cfg.stages)} stages; nothing to train, its figures are drawn "
              "again from its rows", file=sys.stderr)  # fmt: skip
        try:
            _draw(out, Trackers([]), 0)
        finally:
            out.unlock()
    return out


def _reference_for(cfg: RunConfig, model, stage_start=None):
    """The frozen reference of a stage: the model at the stage's start (with LoRA, the model with its adapter
    switched off; resuming mid-stage, `stage_start`, loaded back by `restore.py`)."""
    if cfg.model.peft.r:
        return AdapterOff(model)
    if stage_start is None:
        return frozen_copy(model)
    reference = stage_start.to(next(model.parameters()).device)  # a model of its own already: no copy
    reference.requires_grad_(False)
    return reference.eval()


def _train(cfg: RunConfig, out: RunDir, model, tokenizer, inputs: Inputs, resume: dict | None) -> RunDir:
    print(f"ldyn: {_loaded(inputs.report)} -> {out.path}", file=sys.stderr)
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator()
    trackers = (
        open_trackers(cfg.report_to, out.path, cfg.name, to_dict(cfg)) if accelerator.is_main_process else Trackers([])
    )
    callbacks = _callbacks(cfg, out, tokenizer, inputs, trackers)
    graphs = cfg.cuda_graphs_pad_to if _graphs(cfg, accelerator) else 0  # decided (and any note printed) once
    shared = _Shared(cfg, out, tokenizer, inputs, accelerator, callbacks, graphs)
    step = resume["step"] if resume else 0
    first_stage = resume["stage_index"] if resume else 0
    prepared = None
    for index in range(first_stage, len(cfg.stages)):
        start = resume["stage_step"] if resume and index == first_stage else 0
        if cfg.model.peft.r and not (index == first_stage and has_adapter(model)):  # a fresh adapter per stage
            model, prepared = new_adapter(model, cfg.model.peft, cfg.seed * 1000 + index), None
        if prepared is None:
            prepared = accelerator.prepare_model(model)
        step = _train_stage(shared, index, prepared, step=step, start=start, resume=resume)
        model = accelerator.unwrap_model(prepared)
    if accelerator.is_main_process:
        _draw(out, trackers, step)
    trackers.close()
    return out


def _draw(out: RunDir, trackers: Trackers, step: int) -> None:
    from ldyn.runs.figures import plot_run

    for path in plot_run(out.path):
        print(f"ldyn: wrote {path}", file=sys.stderr)
        if path.suffix == ".png":
            trackers.image(f"ldyn/{path.stem}", path, step)


def _loaded(r: dict) -> str:
    held = f" + {r['probe_held_out_samples']} held-out samples" if r.get("probe_held_out_samples") else ""
    return (
        f"{r['train_pairs']} training rows ({r['train_truncated']} truncated, {r['train_skipped_empty']} "
        f"empty skipped), {r['probe_prompts']} probe prompts{held} x {len(r['probe_types'])} types "
        f"({r['probe_truncated']} truncated, {r['probe_empty_skipped']} empty responses left out)"
    )


def _callbacks(cfg: RunConfig, out: RunDir, tokenizer, inputs: Inputs, trackers: Trackers) -> list:
    """Metrics, probes, checkpoints and (when asked) the decomposition: the trainer knows none of them."""
    pad, done = tokenizer.pad_token_id, out.probed_steps()
    names = [s.name for s in cfg.stages]  # a LoRA checkpoint says which earlier adapters it applies after
    chain = (lambda stage_index: chain_for(cfg.model, cfg.seed, names[:stage_index])) if cfg.model.peft.r else None
    callbacks = [
        MetricsLogger(out, trackers),
        ProbeCallback(
            out, inputs.probes, pad, cfg.probe.every, cfg.probe.batch_tokens, done, trackers, cfg.probe.alerts
        ),
        Checkpointer(out, tokenizer, cfg.checkpoint_every, chain),
    ]
    if cfg.decompose.every:
        d = cfg.decompose
        items = first_prompts(inputs.probes, d.n)
        decomposition = DecompositionCallback(
            out, items, pad, every=d.every, batch_tokens=d.batch_tokens, predict=d.predict, method=d.method
        )
        callbacks.append(decomposition)
    return callbacks


def _graphs(cfg, accelerator) -> bool:
    """Whether this run replays its updates as CUDA graphs: asked for, and on a GPU."""
    if cfg.cuda_graphs and accelerator.device.type != "cuda":
        print("ldyn: cuda_graphs has no effect without a GPU; training runs as usual", file=sys.stderr)
    return cfg.cuda_graphs and accelerator.device.type == "cuda"


def _train_stage(shared: _Shared, index: int, model, *, step: int, start: int, resume: dict | None) -> int:
    """Stage `index` from its update `start` on; returns the global step after it."""
    cfg, accelerator = shared.cfg, shared.accelerator
    stage = cfg.stages[index]
    spec = get_loss(stage.loss.name)
    reference = None
    if stage.has_reference:
        stage_start = resume.pop("reference") if start > 0 else None
        reference = _reference_for(cfg, accelerator.unwrap_model(model), stage_start)
    grpo = _grpo(shared, index, model) if spec.sampled else None  # the trainer's loss and the batches' rollouts
    trainer = Trainer(
        model,
        spec,
        stage.loss,
        stage.optim,
        accelerator=accelerator,
        pad_id=shared.tokenizer.pad_token_id,
        ref_model=reference,
        callbacks=shared.callbacks,
        grad_accum=stage.grad_accum,
        mixed_precision=cfg.mixed_precision,
        compile=cfg.compile,
        cuda_graphs=shared.graphs,
        objective=grpo,
    )
    saved = resume.pop("optimizer_state") if start > 0 else None
    if saved is not None:
        trainer.optimizer.load_state_dict(saved)
    data = batches(
        stage_examples(shared.inputs.train, spec, stage),
        stage.batch_size,
        seed=cfg.seed * 1000 + index,
        skip=start * stage.grad_accum,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    if stage.sample.responses != "none":
        data = _sampled(shared, stage, data, model, reference, first_step=step + 1)
    if spec.sampled:  # each update's prompts become their rollouts
        data = grpo.wrap(data, step + 1)
    return trainer.fit(data, stage.steps, stage=stage.name, stage_index=index, step=step, start=start).step


def _sampled(shared: _Shared, stage: StageConfig, data, model, reference, *, first_step: int):
    """The stage's batches with on-policy samples in place of the data's responses (`sampling.py`)."""
    judge = None
    if stage.sample.responses == "both" and stage.sample.rank == "judge":
        from ldyn.generate.judges import make_judge

        judge = make_judge(shared.cfg.judge, shared.cfg.seed)
    tokenizer, accelerator = shared.tokenizer, shared.accelerator
    sampler = ResponseSampler(
        stage.sample,
        accelerator.unwrap_model(model),
        reference,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        run=shared.out if accelerator.is_main_process else None,
        tokenizer=tokenizer,
        judge=judge,
    )
    return sampler.wrap(data, first_step)


def _grpo(shared: _Shared, index: int, model) -> GRPO:
    """A sampled stage's rollouts and loss (`grpo.py`), sampling from the model being trained."""
    stage, accelerator = shared.cfg.stages[index], shared.accelerator
    run = shared.out if accelerator.is_main_process else None
    return GRPO(stage.rl, accelerator.unwrap_model(model), shared.tokenizer, shared.inputs.rows,
                grad_accum=stage.grad_accum, seed=shared.cfg.seed * 1000 + index, rank=accelerator.process_index,
                run=run)  # fmt: skip
