"""What a run is: nested dataclasses, read from YAML recipes with dotted command-line overrides, checked once.

A recipe is a YAML file that maps one-to-one onto `RunConfig`. `load_config("smollm2_sft_dpo", ["stages.dpo.steps=8"])`
reads the shipped recipe (or a YAML path), applies the overrides and checks the result -- all before any model is
loaded. Types and allowed values are declared on the fields (`schema.py` turns them into one-line errors); the
rules that relate fields to each other are in `check`, the one place a run's settings are validated. Stages are
addressed by name (`stages.dpo.optim.lr=1e-5`), index (`stages.1.steps=4`) or all at once (`stages.*.batch_size=2`).

Each field is documented once, in its comment (beside it, or just above it when it has none beside it), which is
also its help in `ldyn config --keys` (`schema.field_help`). A stage also says in words what it trains (`kind`,
`signal`, `describe`), the one description that plots, claims and the report share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml

from ldyn.data.templates import check_template
from ldyn.errors import LdynError, did_you_mean
from ldyn.losses import LossConfig, RLConfig, get_loss
from ldyn.schema import MISSING, apply_override, from_dict, missing_keys, read_yaml, to_dict

__all__ = ["LossConfig", "MISSING", "RunConfig", "StageConfig", "check", "from_dict", "load_config", "read_yaml"]


@dataclass
class PeftConfig:
    r: int = 0  # LoRA rank: train a LoRA adapter of this rank instead of every weight (0 = full finetuning)
    alpha: float = 16.0  # LoRA scaling numerator: the adapter's update is (alpha / r) · B A
    dropout: float = 0.0  # LoRA dropout; must be 0: ldyn trains with dropout off, as the paper does
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear (every
    # linear layer but the output head)


@dataclass
class ModelConfig:
    name: str = "smollm2"  # "smollm2" (embedded SmolLM2-135M-Instruct), "tiny" (random, tests), HF id or local dir
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"  # dtype the weights are loaded and trained in
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # attention kernel: sdpa (torch's fused) or eager (plain)
    # LoRA (PEFT) instead of full finetuning: each stage trains a fresh adapter on the model the earlier stages
    # left (their adapters merged in), so a DPO stage's reference is its model with the adapter switched off
    peft: PeftConfig = field(default_factory=PeftConfig)


@dataclass
class DataConfig:
    train: str = "embedded"  # training rows: "embedded", a JSONL, a HF dataset or its save_to_disk dir, in any of
    # TRL's formats (data/formats.py), a generated task ("arithmetic", "arithmetic:n=64,digits=1": train/task_data.py)
    # or "probe": the probe set's file (the paper's train_using_prob)
    split: str = "train"  # split to read from a HF dataset
    n_train: int = 0  # use the first N training rows (0 = all)
    skip_empty: bool = False  # drop pairs with an empty prompt or response instead of failing on them
    max_length: int = 512  # prompt + response tokens; longer rows are truncated as in the paper's code
    max_prompt_length: int = 256  # prompt tokens kept when a row is too long
    truncation_mode: Literal["keep_end", "keep_start"] = "keep_end"  # which end of a long prompt to keep (HH: end)
    # how prompts and responses become text (data/templates.py): auto (chat for conversational rows, hh for text) |
    # hh (the paper's format) | chat (the tokenizer's chat template) | a string with {prompt}, e.g.
    # "Human: {prompt}\nAssistant:" (the paper's UltraFeedback format)
    template: str = "auto"


@dataclass
class ProbeConfig:
    path: str = "embedded"  # probe set: "embedded", a JSONL with `prompt` plus one field per response type, or a task
    n: int = 16  # probe the first N prompts (0 = all)
    types: list[str] = field(default_factory=lambda: ["auto"])  # fields to probe; auto = every paper type the file has
    every: int = 5  # probe at step 0, every k updates and at the end of each stage (0 = never)
    batch_tokens: int = 4096  # padded tokens per probe forward pass
    alerts: bool = False  # send each new or changed finding of `ldyn diagnose` to the trackers as an alert
    held_out: str = ""  # held-out prompts (a probe source): their step-0 samples' drop estimates KL(π₀‖π_t)


@dataclass
class DecomposeConfig:
    every: int = 0  # decompose the update after step 0 and after every k-th step (0 = never)
    n: int = 4  # observed prompts: the first N of the probe set, with all their response types
    batch_tokens: int = 1024  # a batch's responses × its longest response (whole prompts per batch): the logits' rows
    # a forward-mode (JVP) batch holds about 3 times; on a GPU larger batches mean fewer kernel launches
    predict: bool = True  # also the first-order A·K·G predictions (most of the cost); false: observed, LBK, SignDelta
    # how the predictions take the first-order change along a step v: jvp (forward-mode, exact) | central
    # ((z(θ+v) − z(θ−v))/2 from plain forwards: cheaper, error O(‖v‖³)) | one_sided (the SGD kernel's parts as
    # z(θ+v) − z(θ), error O(‖v‖²); the real step stays central) | readout (forward passes only: the LM head's
    # exact term plus an estimate of the backbone's, for the SGD kernel's y⁺/y⁻ parts; see dynamics/readout.py)
    method: Literal["jvp", "central", "one_sided", "readout"] = "jvp"


@dataclass
class OptimConfig:
    name: Annotated[Literal["adamw", "rmsprop", "sgd"], "optimizer"] = "adamw"  # the optimizer (the paper's: rmsprop)
    lr: float = 1e-5  # peak learning rate
    weight_decay: float = 0.0  # decoupled for adamw, L2 for rmsprop/sgd
    momentum: float = 0.0  # sgd and rmsprop momentum
    warmup_steps: int = 0  # linear warmup min(1, (t+1)/(warmup+1)) as in the paper's code; constant after
    max_grad_norm: float = 10.0  # clip the global gradient norm (0 = no clipping)


@dataclass
class SampleConfig:
    # none: y⁺ and y⁻ from the data (off-policy) | rejected: y⁻ sampled, y⁺ from the data | both: two samples per
    # prompt, the one `rank` prefers becomes y⁺
    responses: Literal["none", "rejected", "both"] = "none"
    # policy: the model being trained, at each update (on-policy) | reference: the stage's frozen starting model (SPIN)
    source: Literal["policy", "reference"] = "policy"
    # orders the two samples of `both`: overlap (token-unigram F1 with the data's y⁺ minus with its y⁻) | judge (the
    # run's `judge`)
    rank: Annotated[Literal["overlap", "judge"], "reward"] = "overlap"
    max_new_tokens: int = 64  # longest sample; a sample that hits it has no EOS
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # sample from the k most likely tokens only (0 = the whole vocabulary)


@dataclass
class StageConfig:
    name: str = MISSING  # label used in files and figures, and to address the stage in overrides (sft, dpo, ...)
    steps: int = MISSING  # number of optimizer updates in this stage
    loss: LossConfig = field(default_factory=LossConfig)  # the training loss and its hyperparameters
    optim: OptimConfig = field(default_factory=OptimConfig)  # the optimizer and its learning-rate schedule
    batch_size: int = 4  # pairs (or SFT examples, or a sampled loss's prompts) per micro-batch
    grad_accum: int = 1  # micro-batches per update
    extend: bool = False  # SFT on chosen ∪ rejected: each pair gives two SFT examples (the paper's "extend")
    target: str = "chosen"  # the response field SFT trains on (chosen, rejected, irr_hum, ...: the paper's
    # train_supervise); preference losses always use chosen and rejected
    sample: SampleConfig = field(default_factory=SampleConfig)  # on-policy responses (preference losses only)
    rl: RLConfig = field(default_factory=RLConfig)  # a sampled loss's (grpo) sampling, reward and objective

    @property
    def kind(self) -> str:
        """What the stage trains, in one word: "sft" (on chosen), "sft:<target>", "extend" (SFT on chosen ∪
        rejected), "<loss>" (off-policy preference loss), "<loss>+onpolicy" (y⁻ sampled from the policy),
        "<loss>+ranked" (both sampled and ranked), or "spin" (y⁻ sampled from the stage's starting model)."""
        loss = self.loss.name
        if self.extend:
            return "extend"
        if self.sample.responses == "rejected" and self.sample.source == "reference":
            return "spin"
        if self.sample.responses != "none":
            return f"{loss}+{'ranked' if self.sample.responses == 'both' else 'onpolicy'}"
        if not get_loss(loss).needs_rejected and self.target != "chosen":
            return f"{loss}:{self.target}"
        return loss

    def signal(self) -> str:
        """A short label of the training signal: "SFT on irr_hum", "DPO (y⁺, y⁻)", "SFT on chosen ∪ rejected"."""
        if self.extend:
            return f"{self.loss.name.upper()} on chosen ∪ rejected"
        if get_loss(self.loss.name).sampled:
            return f"{self.loss.name.upper()} on {self.rl.num_generations} samples a prompt ({self.rl.reward})"
        if not get_loss(self.loss.name).needs_rejected:
            return f"{self.loss.name.upper()} on {self.target}"
        return f"{self.loss.name.upper()} (y⁺, y⁻)"

    def needs(self) -> dict[str, str]:
        """The response fields every training row must have for this stage, each with why (for errors)."""
        what = f"stage '{self.name}' ({self.signal()})"
        if get_loss(self.loss.name).sampled:  # prompts only: it samples its responses
            return {}
        if not get_loss(self.loss.name).needs_rejected:
            fields = {self.target: f"{what} trains on it"}
            return fields | ({"rejected": f"{what} trains on it too"} if self.extend else {})
        if self.sample.responses == "rejected":
            return {"chosen": f"{what} takes y⁺ from the data (y⁻ is sampled)"}
        if self.sample.responses == "both" and self.sample.rank == "judge":
            return {}
        why = "ranks its samples by overlap with them" if self.sample.responses == "both" else "trains on them"
        return {"chosen": f"{what} {why}", "rejected": f"{what} {why}"}

    @property
    def has_reference(self) -> bool:
        """Whether the stage has a frozen copy of its starting model: its loss needs one, or a KL term (rl.beta)."""
        return get_loss(self.loss.name).needs_reference or (get_loss(self.loss.name).sampled and self.rl.beta > 0)

    def describe(self) -> str:
        """One line: "dpo: dpo, sampled rejected from the policy, 20 updates × 4, adamw lr 1e-05"."""
        loss = self.loss.name
        extra = (
            " on chosen ∪ rejected"
            if self.extend
            else (f" on {self.target}" if self.kind.startswith(f"{loss}:") else "")
        )
        if self.sample.responses != "none":
            extra += f", sampled {self.sample.responses} from the {self.sample.source}"
        return (
            f"{self.name}: {loss}{extra}, {self.steps} updates × {self.batch_size}, {self.optim.name} "
            f"lr {self.optim.lr}"
        )


@dataclass
class JudgeConfig:
    # local: a causal LM scores the letters A and B | endpoint: an OpenAI-compatible chat API at $LDYN_JUDGE_URL
    # with key $LDYN_JUDGE_KEY
    kind: Literal["local", "endpoint"] = "local"
    model: str = "smollm2"  # local: the judge model (as model.name); endpoint: the model name sent to the API
    timeout: float = 60.0  # endpoint: seconds per request
    retries: int = 3  # endpoint: attempts per judgement (timeouts, errors, unparseable answers)
    time_limit: float = 0.0  # endpoint: seconds for all judgements together; the rest are asked next run (0 = none)


@dataclass
class RunConfig:
    name: str = MISSING  # run name; the run directory defaults to runs/<name>
    output_dir: str = ""  # run directory ("" = runs/<name>)
    seed: int = 0  # seeds data order, derived probe types and tiny-model init
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16: autocast for training; probes always run in fp32
    # torch.compile the decoder layers of the training forward (models.compiled; packed or padded, any loss);
    # probes and the decomposition keep the eager model
    compile: Literal["no", "default", "reduce-overhead", "max-autotune"] = "no"
    # on one GPU: record each batch length's training forward and backward once as a CUDA graph and replay it
    # (train/graphs.py), against the kernel-launch bound of small models; lengths are padded up to multiples of
    # cuda_graphs_pad_to tokens so that they repeat. Needs compile=no and grad_accum=1; no effect on a CPU
    cuda_graphs: bool = False
    cuda_graphs_pad_to: int = 64  # cuda_graphs: pad batch lengths up to a multiple of this many tokens
    checkpoint_every: int = 0  # save a resumable checkpoint every k updates (0 = only at stage ends)
    # experiment trackers, local or offline by default: tensorboard (runs/<name>/tensorboard), wandb (offline unless
    # $WANDB_MODE), trackio; each gets the probe curves, the training metrics and the figures
    report_to: list[Literal["none", "tensorboard", "wandb", "trackio"]] = field(default_factory=lambda: ["none"])
    model: ModelConfig = field(default_factory=ModelConfig)  # the model trained (and probed)
    data: DataConfig = field(default_factory=DataConfig)  # the training rows and how they become tokens
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # the responses whose log-probs are recorded as it trains
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)  # updates' effects as A·K·G terms
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # ranks samples for stages with sample.rank=judge
    stages: list[StageConfig] = field(default_factory=list)  # trained in order; each DPO-family stage's reference
    # is a frozen copy of the model at that stage's start

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def describe(self) -> str:
        """The model and every stage in one line (report and console)."""
        lora = f" + LoRA r={self.model.peft.r}" if self.model.peft.r else ""
        return f"{self.model.name}{lora}; " + "; ".join(s.describe() for s in self.stages)


# ---------------------------------------------------------------- the rules between fields


def check(cfg: RunConfig) -> None:
    """Fail on missing required values and on settings that cannot run or make no sense: cheap, and before any model
    loads or any file is written."""
    missing = missing_keys(cfg)
    if missing:
        raise LdynError(
            f"missing required value{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
            f"(set it in the recipe or on the command line, e.g. {missing[0]}=...)"
        )
    if not cfg.stages:
        raise LdynError("no training stages: a recipe needs at least one entry under 'stages'")
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise LdynError(f"stage names must be unique, got {names}")
    d, p, k = cfg.data, cfg.probe, cfg.decompose
    _bounds([("checkpoint_every", cfg.checkpoint_every, 0), ("data.n_train", d.n_train, 0),
             ("data.max_length", d.max_length, 2), ("data.max_prompt_length", d.max_prompt_length, 1),
             ("probe.n", p.n, 0), ("probe.every", p.every, 0), ("probe.batch_tokens", p.batch_tokens, 1),
             ("decompose.every", k.every, 0), ("decompose.n", k.n, 1), ("decompose.batch_tokens", k.batch_tokens, 1),
             ("judge.retries", cfg.judge.retries, 1)])  # fmt: skip
    _positive([("judge.timeout", cfg.judge.timeout)])
    _bounds([("judge.time_limit", cfg.judge.time_limit, 0)])
    for stage in cfg.stages:
        _check_stage(stage)
    if cfg.cuda_graphs:
        _bounds([("cuda_graphs_pad_to", cfg.cuda_graphs_pad_to, 1)])
        if cfg.compile != "no":
            raise LdynError(f"replaces compile: set compile=no (got {cfg.compile})", field="cuda_graphs")
        if any(s.grad_accum != 1 for s in cfg.stages):
            raise LdynError("replays one micro-batch per update: set every stage's grad_accum=1", field="cuda_graphs")
    check_template(d.template)
    _check_peft(cfg.model.peft)
    if d.max_prompt_length >= d.max_length:
        raise LdynError("must be smaller than data.max_length", field="data.max_prompt_length")


def _check_peft(p: PeftConfig) -> None:
    _bounds([("model.peft.r", p.r, 0)])
    if not p.r:
        return
    _positive([("model.peft.alpha", p.alpha)])
    if p.dropout != 0:
        raise LdynError(f"must be 0, got {p.dropout}: ldyn trains with dropout off (the paper's setting, and the "
                        "deterministic forward the decomposition needs)", field="model.peft.dropout")  # fmt: skip
    if not p.target_modules:
        raise LdynError("names no module: give module names (q_proj, v_proj, ...) or all-linear",
                        field="model.peft.target_modules")  # fmt: skip


def _bounds(values: list[tuple[str, float, float]]) -> None:
    """Each (field, value, minimum): the value must be at least the minimum."""
    for key, value, minimum in values:
        if value < minimum:
            raise LdynError(f"must be >= {minimum}, got {value}", field=key)


def _positive(values: list[tuple[str, float]]) -> None:
    for key, value in values:
        if not value > 0:
            raise LdynError(f"must be > 0, got {value}", field=key)


def _check_stage(s: StageConfig) -> None:
    where = f"stages.{s.name}"
    o = s.optim
    _bounds([(f"{where}.steps", s.steps, 0), (f"{where}.batch_size", s.batch_size, 1),
             (f"{where}.grad_accum", s.grad_accum, 1), (f"{where}.optim.weight_decay", o.weight_decay, 0),
             (f"{where}.optim.momentum", o.momentum, 0), (f"{where}.optim.warmup_steps", o.warmup_steps, 0),
             (f"{where}.optim.max_grad_norm", o.max_grad_norm, 0),
             (f"{where}.sample.top_k", s.sample.top_k, 0)])  # fmt: skip
    _positive([(f"{where}.optim.lr", o.lr)])
    spec = get_loss(s.loss.name)
    if "beta" in spec.params:
        _positive([(f"{where}.loss.beta", s.loss.beta)])
    if "label_smoothing" in spec.params and not 0 <= s.loss.label_smoothing < 0.5:
        raise LdynError(f"must be in [0, 0.5), got {s.loss.label_smoothing}", field=f"{where}.loss.label_smoothing")
    sft_style = not (spec.needs_rejected or spec.sampled)
    if s.extend and not sft_style:
        raise LdynError(
            f"extend (SFT on chosen ∪ rejected) needs an SFT-style loss, not '{spec.name}'", field=f"{where}.extend"
        )
    if s.target != "chosen" and not sft_style:
        raise LdynError(
            f"a target field applies to SFT-style losses, not '{spec.name}'",
            field=f"{where}.target",
        )
    sample = s.sample
    if sample.responses == "none":
        return
    if not spec.needs_rejected:
        raise LdynError(
            f"sampled responses feed a preference loss, not '{spec.name}'", field=f"{where}.sample.responses"
        )
    if sample.source == "reference" and not spec.needs_reference:
        raise LdynError(f"'{spec.name}' has no reference model to sample from", field=f"{where}.sample.source")
    if sample.max_new_tokens < 1 or sample.temperature <= 0:
        raise LdynError("max_new_tokens must be >= 1 and temperature > 0", field=f"{where}.sample")


# ---------------------------------------------------------------- recipes


def _shipped(suites: bool) -> list[str]:
    names = []
    for p in resources.files("ldyn.recipes").iterdir():
        if p.name.endswith(".yaml"):
            text = "\n" + p.read_text(encoding="utf-8")
            if ("\nsuite:" in text) == suites:
                names.append(p.name[:-5])
    return sorted(names)


def recipe_names() -> list[str]:
    """Shipped single-run recipes."""
    return _shipped(suites=False)


def suite_names() -> list[str]:
    """Shipped suites (YAML files with a top-level `suite:` key, see `paper/suite.py`)."""
    return _shipped(suites=True)


def recipe_path(name_or_path: str) -> Path:
    """A YAML path as given, or the shipped recipe of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise LdynError("recipe file not found", file=str(path))
        return path
    shipped = resources.files("ldyn.recipes") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise LdynError(
            f"unknown recipe '{name_or_path}'"
            f"{did_you_mean(name_or_path, recipe_names() + suite_names())}; "
            "give a shipped recipe name (`ldyn ls recipes`) or a YAML path"
        )
    return Path(str(shipped))


def load_config(recipe: str, overrides: list[str] = ()) -> RunConfig:
    """Recipe name or path + dotted overrides -> a checked RunConfig."""
    path = recipe_path(recipe)
    cfg = from_dict(RunConfig, read_yaml(path), file=str(path))
    for item in overrides:
        apply_override(cfg, item)
    check(cfg)
    return cfg


def read_config(path: Path) -> RunConfig:
    """A run directory's `config.yaml` as a RunConfig (not checked: a partial config reads with defaults)."""
    return from_dict(RunConfig, read_yaml(path), file=str(path))


def dump_config(cfg: RunConfig, omit: tuple[str, ...] = ()) -> str:
    """The config as YAML; `omit`: top-level sections left out (`read_config` reads them back as defaults)."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in omit}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
