"""What ldyn reads of a host trainer (TRL's or transformers'): which stage and loss its arguments describe, the
trackers it reports to, and the run as an ldyn `RunConfig`, so that plots, claims and reports read a callback's
run as a native one."""

from __future__ import annotations

from pathlib import Path

from ldyn.config import DataConfig, DecomposeConfig, ModelConfig, OptimConfig, ProbeConfig, RunConfig, StageConfig
from ldyn.losses import LossConfig
from ldyn.runtime.distributed import rank_and_world

TRL_LOSSES = {"sigmoid": "dpo", "ipo": "ipo", "hinge": "slic", "sppo_hard": "sppo"}  # TRL loss_type -> ldyn loss
OPTIMIZERS = ("adamw", "rmsprop", "sgd")


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
    )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return RunConfig(
        name=Path(args.output_dir).name,
        output_dir=str(run_dir),
        seed=args.seed,
        mixed_precision="bf16" if args.bf16 else "no",
        data=data,
        probe=probe,
        model=ModelConfig(name=name, dtype=dtype if dtype in ("float32", "bfloat16", "float64") else "float32"),
        decompose=decompose,
        stages=[stage],
    )


def stage_name(args) -> str:
    """ "dpo" for TRL's DPOConfig, "sft" for SFTConfig and plain TrainingArguments (language modelling)."""
    return "dpo" if type(args).__name__.startswith("DPO") else "sft"


def loss_name(args) -> str:
    """ldyn's name for the trainer's loss (DPO's `loss_type`; SFT and plain training: "sft")."""
    if stage_name(args) == "sft":
        return "sft"
    kinds = getattr(args, "loss_type", "sigmoid")
    kind = kinds[0] if isinstance(kinds, (list, tuple)) and kinds else kinds
    return TRL_LOSSES.get(str(kind), "dpo")


def report_to(args) -> list[str]:
    report = args.report_to
    if report in (None, "none"):
        return []
    if report == "all":
        return ["tensorboard", "wandb", "trackio"]
    return [report] if isinstance(report, str) else list(report)
