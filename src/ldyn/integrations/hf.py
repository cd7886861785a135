"""`LearningDynamicsCallback`: ldyn's probing, and the observed and predicted change of an update, inside any
`transformers.Trainer` -- TRL's SFT, DPO, GRPO and RLOO trainers included. Add it to the trainer you already have:

    from ldyn.integrations import LearningDynamicsCallback

    trainer = DPOTrainer(model=..., args=DPOConfig(...), train_dataset=..., processing_class=tokenizer,
                         callbacks=[LearningDynamicsCallback("probes.jsonl", every=10)])
    trainer.train()        # then: ldyn plot / report / influence / export <output_dir>/ldyn

It probes at step 0, every `every` optimizer steps and at the end with ldyn's one probing code (the same records
and fast paths as `ldyn run`, in fp32 and eval mode whatever the trainer's precision and mode), split across the
processes of a distributed run and gathered on rank 0. It writes an ldyn run directory: `config.yaml` (the run as
ldyn describes one, from the trainer's arguments), `trainer_args.json` (all of them), the trainer's logged metrics in
`metrics.jsonl`, `probes.jsonl`, and the figures. It never touches the training itself.

It opens no tracker run of its own: each probe round's scalars (`ldyn/dlogp/<type>`, the mean change of log π
since step 0; `ldyn/a_norm/<type>`) and each observed update's (`ldyn/observed/<type>`, `ldyn/predicted/<type>`)
go through the trainer's own logging at its global step -- `trainer.state.log_history`, the console line and the
trackers of `report_to` (TensorBoard, W&B, trackio..., which prefix them `train/`), in the trainer's run -- and
the figures, as images, to those of them that take images.

What the Trainer API shows a callback, and so what it can record around an update (`decompose_every=k`): the model
before the optimizer step (`on_pre_optimizer_step`) and after it (`on_optimizer_step`), and the learning rate. So it
records the observed Δ log π of the first `decompose_n` probe prompts over that update and its first-order
prediction along the real step Δθ = θ_{t+1} − θ_t (the "predicted" column, with the mass split, SignDelta). The
update batch is not visible there, so there is no G, no y⁺/y⁻ split (`sgd_positive`, `sgd_negative`) and no LBK:
the full A·K·G decomposition stays in ldyn's own trainer (`decompose.every`). With `decompose_method="readout"`
(forward passes only, `dynamics/readout.py`) the prediction is the real step's LM-head term ΔW·h
(`readout/head_step`, exact for any optimizer). The observation runs on the main process only (DDP; not under
ZeRO-3 or FSDP, whose forward passes need every process), but for the readout's, which runs on every process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from ldyn import __version__
from ldyn.config import (
    DataConfig,
    DecomposeConfig,
    ProbeConfig,
    dump_config,
)
from ldyn.data.probesets import load_probe_set, probe_set_rows
from ldyn.dynamics.probing import ProbeItem, first_prompts, probe_across_ranks, tokenized_probe_items
from ldyn.dynamics.update import Decomposer
from ldyn.errors import LdynError
from ldyn.integrations import arguments
from ldyn.integrations.host import describe_run, find_trainer, stage_name, warn
from ldyn.integrations.rollouts import probes_rollouts, rollout_rows
from ldyn.integrations.trainer_data import available_types, compare_formats, probe_rows
from ldyn.integrations.trainer_log import RoundReport, decomposition_scalars, log_to_trainer, send_images
from ldyn.runs.directory import (
    CONFIG,
    DATA,
    DECOMPOSITION,
    DECOMPOSITION_TIMES,
    METRICS,
    PROBE_SET,
    PROBES,
    ROW_FILES,
    TRAINER_ARGS,
    RunDir,
)
from ldyn.runs.trackers import baseline_of, probe_scalars
from ldyn.runtime.distributed import barrier

LOG_NAMES = {"rewards/margins": "rewards/margin", "rewards/accuracies": "rewards/accuracy", "learning_rate": "lr"}
RENAMED = {
    "observe_every": "decompose_every",
    "observe_n": "decompose_n",
    "observe_method": "decompose_method",
    "predict": "decompose_predict",
}

HOST_OMITS = ("judge", "compile", "cuda_graphs", "cuda_graphs_pad_to", "checkpoint_every")


class LearningDynamicsCallback(TrainerCallback):
    """Probe during any transformers/TRL training into an ldyn run directory.

    probes: None (the default) probes the host trainer's own data: the first `n` prompts of its `train_dataset` and,
    when it has an `eval_dataset`, the first `held_out` of those (held-out prompts), each with the responses the
    data has (chosen, rejected, the completion or the last assistant turn) and the paper's rule-based types derived
    from them (`integrations/trainer_data.py`); on an RL trainer's prompt-only data (GRPO, RLOO), its rollouts of
    the first update, split by reward (`integrations/rollouts.py`). `held_out` left None is 4 when there is an
    eval_dataset, and a count given without one fails when training begins. Or an explicit probe set: "embedded", a
    JSONL in the paper authors' format (`prompt` + one field per response type, e.g. from `ldyn probes build`), a
    Hugging Face dataset (hub name or `save_to_disk` folder), or the rows themselves (a list of dicts or a
    `datasets.Dataset`).
    `types`: the response types to probe ("auto" = every paper type present; a list, or one string read as the
    recipe's list syntax: "chosen,rejected").
    `every`: probe every k optimizer steps (and at step 0 and the end). `output_dir`: the run directory (default
    `<args.output_dir>/ldyn`). `max_length`, `max_prompt_length`, `truncation_mode` tokenise the probes as `ldyn
    run` does; left None, the trainer's `max_length` (else 512) and half of it for the prompt. `template` renders
    them (`data/templates.py`: "auto" applies the tokenizer's chat template to conversational probes, as TRL does
    to conversational training data; "chat" to text ones too). `decompose_every`: record the observed and
    predicted change of every k-th update on the first `decompose_n` prompts (0 = never), the predictions (unless
    `decompose_predict=False`) by forward-mode (`decompose_method="jvp"`), central differences ("central") or,
    cheapest, with the SGD kernel's parts one-sided ("one_sided"), or the real step's head term from forward passes
    ("readout"). Each knob has the name of the recipe key it
    mirrors: `every`, `n`, `types`, `batch_tokens` are `probe.*`, `decompose_*` are `decompose.*`. Bad arguments
    fail here, naming the argument, before the trainer loads anything (`integrations/arguments.py`); what only the
    trainer knows (its max_length, its eval_dataset) fails when training begins, before the run directory is made.
    """

    def __init__(
        self,
        probes=None,
        *,
        every: int = 5,
        n: int = 16,
        held_out: int | None = None,
        types=("auto",),
        output_dir: str | None = None,
        batch_tokens: int = 4096,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
        truncation_mode: str = "keep_end",
        template: str = "auto",
        decompose_every: int = 0,
        decompose_n: int = 2,
        decompose_predict: bool = True,
        decompose_method: str = "jvp",
        seed: int = 0,
        figures: bool = True,
        alerts: bool = False,
        **renamed,
    ):
        for old, new in RENAMED.items():
            if old in renamed:
                raise LdynError(f"LearningDynamicsCallback: `{old}` is now `{new}` (the recipe key's name)")
        if renamed:
            raise LdynError(f"LearningDynamicsCallback: unknown argument(s) {', '.join(sorted(renamed))}")
        counts = dict(every=every, n=n, held_out=held_out, batch_tokens=batch_tokens, seed=seed)
        counts |= dict(max_length=max_length, max_prompt_length=max_prompt_length)
        c = arguments.check_counts(counts | dict(decompose_every=decompose_every, decompose_n=decompose_n))
        arguments.check_flags({"decompose_predict": decompose_predict, "figures": figures, "alerts": alerts})
        arguments.check_choices(truncation_mode, template, decompose_method)
        arguments.check_output_dir(output_dir)
        arguments.check_held_out(held_out, probes)
        self.types = arguments.parse_types(types, known_only=probes is None)
        every, n, held_out, batch_tokens, seed = c["every"], c["n"], c["held_out"], c["batch_tokens"], c["seed"]
        decompose_every, decompose_n = c["decompose_every"], c["decompose_n"]
        self.source, self.probe_set = arguments.check_source(probes, self.types, n, seed)  # probe_set: read already
        self.every, self.n, self.held_out, self.output_dir = every, n, held_out, output_dir
        self.batch_tokens, self.seed, self.figures, self.alerts = batch_tokens, seed, figures, alerts
        self.lengths = (c["max_length"], c["max_prompt_length"])  # None: the trainer's (`arguments.settle_lengths`)
        self.data = DataConfig(train="host trainer", truncation_mode=truncation_mode, template=template)
        self.decompose = DecomposeConfig(
            every=decompose_every, n=decompose_n, predict=decompose_predict, method=decompose_method
        )
        self.run: RunDir | None = None
        self.items: list[ProbeItem] = []
        self.texts: list[dict] = []  # the probed texts, for probe_set.jsonl
        self.done: set[int] = set()
        self.decomposer: Decomposer | None = None  # with decompose_every: set up once the probes are loaded
        self.baseline: dict[str, float] = {}
        self.rollouts = False  # probing the host RL trainer's own step-0 rollouts (`rollouts.py`)

    # ------------------------------------------------------------ events

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer is None:
            raise LdynError("LearningDynamicsCallback needs the tokenizer: pass it to the trainer as processing_class")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.run = RunDir(arguments.check_output_dir(self.output_dir or Path(args.output_dir) / "ldyn"))
        self.stage = stage_name(args)
        trainer = find_trainer()
        arguments.settle_lengths(self.data, self.lengths, args)
        self.rollouts = self.source is None and probes_rollouts(trainer)
        self._starting = tokenizer if self.rollouts and state.global_step == 0 else None  # sampled in its 1st update
        if self._starting is None:
            self._start(args, state, model, tokenizer, trainer)

    def _start(self, args, state, model, tokenizer, trainer) -> None:  # the probes, the run directory, step 0
        self.items, report = self._load_probes(tokenizer, trainer)
        if state.is_world_process_zero:
            print(self._announce(report), flush=True)
        d = self.decompose
        observed = first_prompts(self.items, d.n)  # the prompts `decompose_every` watches
        self.decomposer = Decomposer(
            observed,
            self.pad_id,
            method=d.method,
            predict=d.predict,
            batch_tokens=d.batch_tokens,
            every_update=d.every == 1,
        )
        if state.is_world_process_zero:
            self._start_run(args, state, model, report)
        barrier()  # the main process has prepared the run directory before anyone reads it
        self.done = self.run.probed_steps()  # every process: they all decide alike
        if state.global_step == 0:
            self._probe(state, model)

    def on_step_begin(self, args, state, control, **kwargs):
        self._emit(args, state, control)  # the step-0 round, once every callback (the console's bar too) has begun

    def on_step_end(self, args, state, control, model=None, **kwargs):
        last = control.should_training_stop or state.global_step >= state.max_steps  # while the trackers are open
        if self.every and (state.global_step % self.every == 0 or last):
            self._probe(state, model, args)
        self._emit(args, state, control)  # this round and this update's decomposition, at the step they describe

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._starting is not None:  # the step-0 rollouts are sampled, and the model is still θ₀
            tokenizer, self._starting = self._starting, None
            self._start(args, state, model, tokenizer, find_trainer())
        k = self.decompose.every
        readout = self.decompose.method == "readout"  # on every process: a sharded model's forwards need them all
        if k and state.global_step % k == 0 and (readout or state.is_world_process_zero):
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else args.learning_rate
            self.decomposer.begin(model, lr)  # the update batch is not visible here: only the real step

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.decomposer is None or self.decomposer.pending is None:
            return
        started, step = time.perf_counter(), state.global_step + 1  # global_step counts the update after this event
        rows = self.decomposer.finish(model)
        if not state.is_world_process_zero:  # the readout runs on every process, with the same rows
            return
        self.run.append(DECOMPOSITION, [{"step": step, "stage": self.stage, **row} for row in rows])
        seconds = round(time.perf_counter() - started, 3)  # after the step: the forward-mode passes and the observed
        self.run.append(DECOMPOSITION_TIMES, [{"step": step, "seconds": seconds, "items": len(self.decomposer.items)}])
        self._queue(decomposition_scalars(rows))  # logged at on_step_end, once global_step is `step`

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._emitting or not state.is_world_process_zero or not logs:
            return  # ldyn's own scalars (`_emit`) are in probes.jsonl and decomposition.jsonl already
        if "train_runtime" in logs:  # the trainer's last log, before on_train_end closes its trackers
            if self.figures:
                self._figures(state, to_trackers=True)
            return
        row = {LOG_NAMES.get(k, k): v for k, v in logs.items() if isinstance(v, (int, float))}
        self.run.append(METRICS, [{"step": state.global_step, "stage": self.stage, **row}])

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._starting is not None:  # no update, so no rollouts: nothing was probed
            return
        self._probe(state, model, args)  # training stopped between probe steps by a later callback: its last round
        if not state.is_world_process_zero:
            return
        self._emit(args, state, control, to_callbacks=False)  # the trainer's trackers have closed: its history only
        self.run.unlock()
        if self.figures and self._plotted != len(self.done):
            self._figures(state, to_trackers=False)

    # ------------------------------------------------------------ work

    def _load_probes(self, tokenizer, trainer) -> tuple[list[ProbeItem], dict]:
        """The probe set's items: the explicit source, or the host trainer's own data (`trainer_data`)."""
        if self.source is not None:
            examples, types = self.probe_set or load_probe_set(self.source, self.types, self.n, self.seed, n_key="n")
            compare_formats(trainer, examples[0], self.data.template)
            items, report = tokenized_probe_items(examples, types, tokenizer, self.data)
            self.texts = probe_set_rows(examples, types)
            return items, report | {"probe_source": self.source if isinstance(self.source, str) else "<rows>"}
        if trainer is None:
            raise LdynError(
                "LearningDynamicsCallback() probes the trainer's own data, but no transformers Trainer "
                "is running this event: pass a probe set, e.g. LearningDynamicsCallback('embedded')"
            )
        if self.rollouts:
            rows, origin = rollout_rows(trainer, self.n, self.seed, self.run.path)
        else:
            held_out = arguments.held_out_of(self.held_out, trainer.eval_dataset)
            eos = tokenizer.eos_token  # TRL appended its text to every prepared response
            rows, origin = probe_rows(trainer.train_dataset, trainer.eval_dataset, self.n, held_out, self.seed, eos)
        have = available_types(rows)
        wanted = have if self.types == ["auto"] else self.types
        missing = [t for t in wanted if t not in have]
        if missing:
            raise LdynError(
                f"type '{missing[0]}' is not in the trainer's data or derived from it (there: {', '.join(have)})",
                field="types",
            )
        examples, types = load_probe_set(rows, wanted, 0, self.seed, n_key="n")
        items, report = tokenized_probe_items(examples, types, tokenizer, self.data)
        self.texts = probe_set_rows(examples, types)  # the derived types' texts too
        return items, report | origin

    def _announce(self, report: dict) -> str:
        """One line: what is probed, how often, and where it is written."""
        types = ", ".join(report.get("probe_types", []))
        where = report.get("probe_source", "")
        if where == "the host trainer's data":
            held = len(report.get("probe_held_out", []))
            what = f"{len(report['probe_trained'])} train_dataset prompts" + (f" + {held} eval_dataset" if held else "")
        else:
            what = f"{report.get('probe_prompts', 0)} prompts of {where}"
        return f"ldyn: probing {what} ({types}, + argmax) every {self.every} steps -> {self.run.path}"

    def _start_run(self, args, state, model, report: dict) -> None:
        """The run directory: created at step 0; on a resumed training, the rows after the resumed step dropped."""
        self.run.lock()
        if state.global_step > 0 and self.run.exists():
            self.run.rewind(state.global_step)
            if not (self.run.path / PROBE_SET).is_file():  # written before ldyn kept the probed texts
                self.run.rewrite(PROBE_SET, self.texts)
        else:  # a new training into this folder replaces what an earlier one wrote there
            for name in ROW_FILES:
                (self.run.path / name).unlink(missing_ok=True)
            cfg = describe_run(
                args,
                state,
                model,
                run_dir=self.run.path,
                data=self.data,
                probe=self._probe_config(),
                decompose=self.decompose,
            )
            # what only ldyn's own trainer has (its judge, compile and graph switches, checkpoint cadence) would
            # misdescribe the host trainer's run: left out
            text = dump_config(cfg, omit=HOST_OMITS)
            self.run.write_text(CONFIG, f"# ldyn {__version__} (LearningDynamicsCallback)\n" + text)
            self.run.write_json(DATA, report | {"trainer": type(args).__name__})
            self.run.rewrite(PROBE_SET, self.texts)
            self.run.write_text(TRAINER_ARGS, json.dumps(args.to_dict(), indent=2, default=str) + "\n")
        self._args = args  # the main process's probe rounds read `disable_tqdm` from it

    def _probe_config(self) -> ProbeConfig:
        source = (
            "<the trainer's data>" if self.source is None else self.source if isinstance(self.source, str) else "<rows>"
        )
        return ProbeConfig(path=source, n=self.n, types=self.types, every=self.every, batch_tokens=self.batch_tokens)

    def _probe(self, state, model, args=None) -> None:
        """One probe round at the current step, unless it was taken already (every process takes part)."""
        step = state.global_step
        if not self.every or step in self.done:
            return
        started = time.perf_counter()
        progress = not getattr(args or self._args, "disable_tqdm", False)
        records = probe_across_ranks(model, self.items, self.pad_id, self.batch_tokens, progress=progress)
        self.done.add(step)
        if not state.is_world_process_zero:
            return
        self.run.append_probe_round(step, self.stage, records, time.perf_counter() - started, len(self.items))
        if not self.baseline and step > 0:  # resumed: changes are measured from the step-0 round
            self.baseline = baseline_of(self.run.read(PROBES))
        scalars = probe_scalars(records, self.baseline)  # probe/dlogp/<type>, probe/a_norm/<type>
        self._queue({"ldyn/" + k.removeprefix("probe/"): v for k, v in scalars.items()})
        if self._report is None:
            self._report = RoundReport(self.run, self.texts, self.alerts)
        self._report.after_round(self._host_callbacks(), records, step)  # its table, the diagnosis, alerts

    # ------------------------------------------------------------ the trainer's own log stream

    _args = None  # the trainer's arguments (`_start_run`)
    _starting = None  # probing an RL trainer's step-0 rollouts: its tokenizer, until they are sampled (`_start`)
    _pending: dict | None = None  # scalars waiting for `_emit`
    _emitting = False  # `_emit` is handing them to the callbacks, ours included
    _plotted = -1  # how many probe rounds the figures last drew
    _report: RoundReport | None = None  # after each round: the trackers' table and the diagnosis (main process)

    def _queue(self, scalars: dict[str, float]) -> None:
        self._pending = (self._pending or {}) | scalars

    def _emit(self, args, state, control, to_callbacks: bool = True) -> None:
        """The pending scalars through the trainer's own logging (`trainer_log.log_to_trainer`), main process only;
        `to_callbacks=False` (the trackers have closed): into its history only."""
        scalars, self._pending = self._pending or {}, None
        if not scalars or not state.is_world_process_zero:
            return
        self._emitting = True
        try:
            log_to_trainer(self._host_callbacks() if to_callbacks else None, args, state, control, scalars)
        finally:
            self._emitting = False

    def _host_callbacks(self):
        """The CallbackHandler of the Trainer running this event (`find_trainer`: transformers hands a callback no
        trainer; looked up each time, as one callback may serve one trainer after another), or None."""
        trainer = find_trainer()
        if trainer is None or not any(cb is self for cb in trainer.callback_handler.callbacks):
            return None
        return trainer.callback_handler

    def _figures(self, state, to_trackers: bool) -> None:
        """The run's figures, and (`to_trackers`) each PNG to the trainer's trackers that take images, best effort."""
        from ldyn.runs.figures import plot_run

        self._plotted = len(self.done)
        try:
            pngs = [p for p in plot_run(self.run.path) if p.suffix == ".png"]
        except Exception as error:
            warn(f"ldyn's figures failed ({error}); `ldyn plot {self.run.path}` draws them from the run directory")
            return
        handler = self._host_callbacks() if to_trackers else None
        for callback in handler.callbacks if handler is not None else []:
            try:
                send_images(callback, {f"ldyn/{p.stem}": p for p in pngs}, state.global_step)
            except Exception as error:
                warn(f"ldyn's figures did not reach {type(callback).__name__}: {error}")
