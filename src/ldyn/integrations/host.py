"""What ldyn reads of a host trainer (TRL's or transformers'): which stage and loss its arguments describe, the
trackers it reports to, and the run as an ldyn `RunConfig`, so that plots, claims and reports read a callback's
run as a native one."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from ldyn.config import (
    DataConfig,
    DecomposeConfig,
    ModelConfig,
    OptimConfig,
    PeftConfig,
    ProbeConfig,
    RunConfig,
    StageConfig,
)
from ldyn.losses import LossConfig
from ldyn.runtime.distributed import rank_and_world

TRL_LOSSES = {"sigmoid": "dpo", "ipo": "ipo", "hinge": "slic", "sppo_hard": "sppo"}  # DPO's loss_type -> ldyn loss
# TRL's other trainers of a causal LM, by their arguments' class (`<Kind>Config`): kind -> {loss_type: ldyn loss}, ""
# for any other loss_type. ldyn's registry has no ORPO, CPO, KTO or policy-gradient loss, and a run's loss must be a
# registered one (`ldyn ls losses`), so each is described as the nearest; the trainer's own loss_type and settings
# are in the run's trainer_args.json.
TRL_TRAINER_LOSSES = {
    # ORPO: NLL on y⁺ + β·(−log σ(log-odds y⁺ − log-odds y⁻)), reference-free; rpo: NLL on y⁺ + a sigmoid contrast
    "orpo": {"": "rpo"},
    # CPO: DPO's losses with the reference dropped (the CPO paper's uniform reference), + cpo_alpha · NLL on y⁺:
    # sigmoid is rpo less the reference, hinge is SLiC-HF, simpo (and alphapo, which TRL runs as simpo) is SimPO
    "cpo": {"sigmoid": "rpo", "hinge": "slic", "ipo": "ipo", "simpo": "simpo", "alphapo": "simpo", "": "rpo"},
    # KTO: unpaired, each completion moved on its own (desirable up, undesirable down, against a reference and a KL
    # baseline); sppo is ldyn's loss of one separate term per response (y⁺ toward +1/2β, y⁻ toward −1/2β)
    "kto": {"": "sppo"},
    # GRPO, RLOO: policy gradient on the policy's own samples, Σᵢ Aᵢ ∇ log π(yᵢ|x) (+ β·KL to the reference): SFT on
    # the samples weighted by their advantage (ldyn has no RL loss)
    "grpo": {"": "sft"},
    "rloo": {"": "sft"},
}
OPTIMIZERS = ("adamw", "rmsprop", "sgd")
TRACKERS = ("tensorboard", "wandb", "trackio")  # the host's trackers a RunConfig records (`report_to`)


def describe_run(
    args, state, model, *, run_dir: Path, data: DataConfig, probe: ProbeConfig, decompose: DecomposeConfig
) -> RunConfig:
    """The training as an ldyn RunConfig, so that plots, claims and reports read it as a native run."""
    loss = LossConfig(name=loss_name(args), beta=float(getattr(args, "beta", 0.1) or 0.1))
    optim = OptimConfig(
        name=next((o for o in OPTIMIZERS if str(args.optim).startswith(o)), "adamw"),
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=int(args.warmup_steps or 0),
        max_grad_norm=args.max_grad_norm or 0.0,
    )
    world = rank_and_world()[1]
    stage = StageConfig(
        name=stage_name(args),
        steps=state.max_steps,
        loss=loss,
        optim=optim,
        grad_accum=args.gradient_accumulation_steps,
        batch_size=args.per_device_train_batch_size * world,
        # RL trainers train on the policy's own samples, not the data's chosen: kind "sft:samples", so the paper's
        # claims about SFT on chosen never read them
        target="samples" if stage_name(args) in ("grpo", "rloo") else "chosen",
    )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    dtype = dtype if dtype in ("float32", "bfloat16", "float64") else "float32"
    return RunConfig(
        name=run_name(args),
        output_dir=str(run_dir),
        seed=args.seed,
        mixed_precision="bf16" if args.bf16 else "no",
        report_to=[k for k in report_to(args) if k in TRACKERS] or ["none"],
        data=data,
        probe=probe,
        model=ModelConfig(name=name, dtype=dtype, peft=peft_of(model)),
        decompose=decompose,
        stages=[stage],
    )


def run_name(args) -> str:
    """The trainer's `run_name` when one was given (transformers < 5 defaults it to `output_dir`), else the output
    folder's name."""
    given = getattr(args, "run_name", None)
    return str(given) if given and str(given) != str(args.output_dir) else Path(args.output_dir).name


def peft_of(model) -> PeftConfig:
    """The LoRA adapter the model trains (a PEFT model, e.g. as TRL's `peft_config` made it) as ldyn's
    `model.peft`; full finetuning (r = 0) for a plain model or another kind of adapter."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return PeftConfig()
    active = getattr(model, "active_adapter", None)
    active = active[0] if isinstance(active, (list, tuple)) and active else active
    cfg = configs.get(active) if isinstance(active, str) else None
    cfg = cfg if cfg is not None else next(iter(configs.values()))
    if not getattr(cfg, "r", 0):
        return PeftConfig()
    targets = cfg.target_modules
    targets = [targets] if isinstance(targets, str) else sorted(targets or [])
    alpha, dropout = float(cfg.lora_alpha), float(cfg.lora_dropout)
    return PeftConfig(r=int(cfg.r), alpha=alpha, dropout=dropout, target_modules=targets)


def trl_kind(args) -> str | None:
    """The TRL trainer the arguments configure ("dpo", "orpo", "cpo", "kto", "grpo", "rloo"): the first class of
    their MRO named `<Kind>Config` (so a user's subclass counts); None for SFTConfig, TrainingArguments and others."""
    for cls in type(args).__mro__:
        kind = cls.__name__.removesuffix("Config").lower()
        if cls.__name__.endswith("Config") and (kind == "dpo" or kind in TRL_TRAINER_LOSSES):
            return kind
    return None


def stage_name(args) -> str:
    """The stage's label: the TRL trainer's kind ("dpo", "orpo", "cpo", "kto", "grpo", "rloo"), else "sft"
    (SFTConfig and plain TrainingArguments: language modelling)."""
    return trl_kind(args) or "sft"


def loss_name(args) -> str:
    """ldyn's name for the trainer's loss: DPO's `loss_type` as TRL_LOSSES maps it, the other TRL trainers' as the
    nearest registered loss (TRL_TRAINER_LOSSES), SFT and plain training "sft"."""
    kind = trl_kind(args)
    if kind is None:
        return "sft"
    kinds = getattr(args, "loss_type", None)
    first = str(kinds[0] if isinstance(kinds, (list, tuple)) and kinds else kinds)
    if kind == "dpo":
        return TRL_LOSSES.get(first, "dpo")
    table = TRL_TRAINER_LOSSES[kind]
    return table.get(first, table[""])


def report_to(args) -> list[str]:
    report = args.report_to
    if report in (None, "none"):
        return []
    if report == "all":
        return ["tensorboard", "wandb", "trackio"]
    return [report] if isinstance(report, str) else list(report)


def find_trainer():
    """The `transformers.Trainer` whose event is being handled: the nearest calling frame whose `self` is one (a
    callback given to the trainer's constructor is never handed the trainer itself). None outside a Trainer."""
    from transformers import Trainer

    frame = inspect.currentframe()
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, Trainer):
            return obj
        frame = frame.f_back
    return None


def warn(message: str) -> None:
    """One warning line on the console (the main process), prefixed as ldyn's are."""
    if rank_and_world()[0] == 0:
        print(f"ldyn: warning: {message}", file=sys.stderr, flush=True)
