"""`LearningDynamicsCallback`: ldyn's probing, and the observed and predicted change of an update, inside any
`transformers.Trainer` -- TRL's `SFTTrainer` and `DPOTrainer` included. Add it to the trainer you already have:

    from ldyn.integrations import LearningDynamicsCallback

    trainer = DPOTrainer(model=..., args=DPOConfig(...), train_dataset=..., processing_class=tokenizer,
                         callbacks=[LearningDynamicsCallback("probes.jsonl", every=10)])
    trainer.train()        # then: ldyn plot / report / influence / export <output_dir>/ldyn

It probes at step 0, every `every` optimizer steps and at the end with ldyn's one probing code (the same records
and fast paths as `ldyn run`, in fp32 and eval mode whatever the trainer's precision and mode), split across the
processes of a distributed run and gathered on rank 0. It writes an ldyn run directory: `config.yaml` (the run as
ldyn describes one, from the trainer's arguments), `trainer_args.json` (all of them), the trainer's logged metrics in
`metrics.jsonl`, `probes.jsonl`, and the figures. It never touches the training itself.

What the Trainer API shows a callback, and so what it can record around an update (`decompose_every=k`): the model
before the optimizer step (`on_pre_optimizer_step`) and after it (`on_optimizer_step`), and the learning rate. So it
records the observed Δ log π of the first `decompose_n` probe prompts over that update and its first-order
prediction along the real step Δθ = θ_{t+1} − θ_t (the "predicted" column, with the mass split, SignDelta). The
update batch is not visible there, so there is no G, no y⁺/y⁻ split (`sgd_positive`, `sgd_negative`) and no LBK:
the full A·K·G decomposition stays in ldyn's own trainer (`decompose.every`). The observation runs on the main
process only (DDP; not under ZeRO-3 or FSDP, whose forward passes need every process).
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
from ldyn.data.templates import check_template
from ldyn.dynamics.probing import ProbeItem, first_prompts, load_probe_items, probe_across_ranks
from ldyn.dynamics.update import METHODS, Decomposer
from ldyn.errors import LdynError
from ldyn.integrations.host import describe_run, report_to, stage_name
from ldyn.runs.directory import CONFIG, DATA, DECOMPOSITION, DECOMPOSITION_TIMES, METRICS, PROBES, ROW_FILES, RunDir
from ldyn.runs.trackers import Trackers, baseline_of, open_trackers, probe_scalars
from ldyn.runtime.distributed import barrier

LOG_NAMES = {"rewards/margins": "rewards/margin", "rewards/accuracies": "rewards/accuracy", "learning_rate": "lr"}
RENAMED = {
    "observe_every": "decompose_every",
    "observe_n": "decompose_n",
    "observe_method": "decompose_method",
    "predict": "decompose_predict",
}


class LearningDynamicsCallback(TrainerCallback):
    """Probe a probe set during any transformers/TRL training into an ldyn run directory.

    probes: "embedded", a JSONL in the paper authors' format (`prompt` + one field per response type), a Hugging
    Face dataset (hub name or `save_to_disk` folder), or the rows themselves. `types`: fields to probe ("auto" =
    every paper type present); `n`: the first n prompts (0 = all); `every`: probe every k optimizer steps (and at
    step 0 and the end). `output_dir`: the run directory (default `<args.output_dir>/ldyn`). `max_length`,
    `max_prompt_length`, `truncation_mode` tokenise the probes as `ldyn run` does; `template` renders them
    (`data/templates.py`: "auto" applies the tokenizer's chat template to conversational probe sets, as TRL does to
    conversational training data; "chat" to text ones too). `decompose_every`: record the
    observed and predicted change of every k-th update on the first `decompose_n` prompts (0 = never), the
    predictions (unless `decompose_predict=False`) by forward-mode (`decompose_method="jvp"`), central differences
    ("central") or, cheapest, with the SGD kernel's parts one-sided ("one_sided"). Each knob has the name of the
    recipe key it mirrors: `every`, `n`, `types`, `batch_tokens` are `probe.*`, `decompose_*` are `decompose.*`.
    """

    def __init__(
        self,
        probes="embedded",
        *,
        every: int = 5,
        n: int = 16,
        types=("auto",),
        output_dir: str | None = None,
        batch_tokens: int = 4096,
        max_length: int = 512,
        max_prompt_length: int = 256,
        truncation_mode: str = "keep_end",
        template: str = "auto",
        decompose_every: int = 0,
        decompose_n: int = 2,
        decompose_predict: bool = True,
        decompose_method: str = "jvp",
        seed: int = 0,
        figures: bool = True,
        **renamed,
    ):
        for old, new in RENAMED.items():
            if old in renamed:
                raise LdynError(f"LearningDynamicsCallback: `{old}` is now `{new}` (the recipe key's name)")
        if renamed:
            raise LdynError(f"LearningDynamicsCallback: unknown argument(s) {', '.join(sorted(renamed))}")
        if every < 0 or decompose_every < 0 or n < 0:
            raise LdynError("every, decompose_every and n must be >= 0")
        if decompose_method not in METHODS:
            raise LdynError(f"decompose_method must be one of {', '.join(METHODS)}, got {decompose_method!r}")
        self.source, self.every, self.n, self.types, self.output_dir = probes, every, n, list(types), output_dir
        self.batch_tokens, self.seed, self.figures = batch_tokens, seed, figures
        self.data = DataConfig(
            train="host trainer",
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            truncation_mode=truncation_mode,
            template=template,
        )
        check_template(template)
        self.decompose = DecomposeConfig(
            every=decompose_every, n=decompose_n, predict=decompose_predict, method=decompose_method
        )
        self.run: RunDir | None = None
        self.items: list[ProbeItem] = []
        self.done: set[int] = set()
        self.decomposer: Decomposer | None = None  # with decompose_every: set up once the probes are loaded
        self.baseline: dict[str, float] = {}
        self.trackers = Trackers([])

    # ------------------------------------------------------------ events

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer is None:
            raise LdynError("LearningDynamicsCallback needs the tokenizer: pass it to the trainer as processing_class")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.run = RunDir(self.output_dir or Path(args.output_dir) / "ldyn")
        self.stage = stage_name(args)
        self.items, report = self._load_probes(tokenizer)
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

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._probe(state, model)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        k = self.decompose.every
        if k and state.global_step % k == 0 and state.is_world_process_zero:
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else args.learning_rate
            self.decomposer.begin(model, lr)  # the update batch is not visible here: only the real step

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.decomposer is None or self.decomposer.pending is None:
            return
        started, step = time.perf_counter(), state.global_step + 1  # global_step counts the update after this event
        rows = self.decomposer.finish(model)
        self.run.append(DECOMPOSITION, [{"step": step, "stage": self.stage, **row} for row in rows])
        seconds = round(time.perf_counter() - started, 3)  # after the step: the forward-mode passes and the observed
        self.run.append(DECOMPOSITION_TIMES, [{"step": step, "seconds": seconds, "items": len(self.decomposer.items)}])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        row = {LOG_NAMES.get(k, k): v for k, v in logs.items() if isinstance(v, (int, float))}
        self.run.append(METRICS, [{"step": state.global_step, "stage": self.stage, **row}])

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._probe(state, model)
        if not state.is_world_process_zero:
            return
        self.run.unlock()
        if self.figures:
            from ldyn.runs.figures import plot_run

            for path in plot_run(self.run.path):
                if path.suffix == ".png":
                    self.trackers.image(f"ldyn/{path.stem}", path, state.global_step)
        self.trackers.close()

    # ------------------------------------------------------------ work

    def _load_probes(self, tokenizer) -> tuple[list[ProbeItem], dict]:
        return load_probe_items(self.source, self.types, self.n, self.seed, tokenizer, self.data)

    def _start_run(self, args, state, model, report: dict) -> None:
        """The run directory: created at step 0; on a resumed training, the rows after the resumed step dropped."""
        self.run.lock()
        if state.global_step > 0 and self.run.exists():
            self.run.rewind(state.global_step)
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
            self.run.write_text(CONFIG, f"# ldyn {__version__} (LearningDynamicsCallback)\n" + dump_config(cfg))
            self.run.write_json(DATA, report | {"trainer": type(args).__name__})
            self.run.write_text("trainer_args.json", json.dumps(args.to_dict(), indent=2, default=str) + "\n")
        kinds = [k for k in report_to(args) if k in ("tensorboard", "wandb", "trackio")]
        self.trackers = open_trackers(kinds, self.run.path, self.run.path.parent.name, args.to_dict())

    def _probe_config(self) -> ProbeConfig:
        source = self.source if isinstance(self.source, str) else "<rows>"
        return ProbeConfig(path=source, n=self.n, types=self.types, every=self.every, batch_tokens=self.batch_tokens)

    def _probe(self, state, model) -> None:
        """One probe round at the current step, unless it was taken already (every process takes part)."""
        step = state.global_step
        if not self.every or step in self.done:
            return
        started = time.perf_counter()
        records = probe_across_ranks(model, self.items, self.pad_id, self.batch_tokens)
        self.done.add(step)
        if not state.is_world_process_zero:
            return
        self.run.append_probe_round(step, self.stage, records, time.perf_counter() - started, len(self.items))
        if not self.baseline and step > 0:  # resumed: changes are measured from the step-0 round
            self.baseline = baseline_of(self.run.read(PROBES))
        self.trackers.log(probe_scalars(records, self.baseline), step)
