"""DPO update speed: ldyn's trainer against TRL's DPOTrainer, same model, same batches, same precision.

Both train the same policy from the same weights on the same pre-tokenized HH pairs, in the same order (TRL is
handed ldyn's token ids, so every batch has exactly the same shape), batch 4 pairs, AdamW, fp32 unless --bf16.
Each side is timed per optimizer update (forward, backward, clipping, optimizer step, and whatever else its loop
does), medians after warm-up. Two reference settings are compared like with like:
  - reference computed in the step: TRL's default (a reference forward every step) against ldyn's first pass
    over the data (the reference forward of examples it has not seen, in the same step);
  - reference precomputed: TRL's `precompute_ref_log_probs=True` against ldyn's cache (every later pass).
TRL is needed only here: pip install trl.

    python benchmarks/dpo_speed.py --data ../shared/data/hh/probe_train.jsonl
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
from common import add_common_arguments, add_compile_argument, machine, median_range, result, setup, sync, timed

from ldyn.losses import get_loss
from ldyn.models.pretrained import frozen_copy
from ldyn.train.experiment import stage_examples
from ldyn.train.trainer import Trainer


def ldyn_times(
    model, examples, *, batch: int, stage, pad_id: int, device: str, bf16: bool, passes: int, compile="no", graphs=0
) -> list:
    """Seconds per update over `passes` passes of the batches; the first pass fills the reference cache. A compiled
    forward is compiled (CUDA graphs recorded) in two passes of its own first, after which the timed passes start again
    from the same weights (copied in place, where the graphs read them), a fresh optimizer and an empty reference
    cache."""
    from accelerate import Accelerator

    training = Trainer(
        model,
        get_loss("dpo"),
        stage.loss,
        stage.optim,
        accelerator=Accelerator(cpu=device == "cpu", mixed_precision="no"),
        pad_id=pad_id,
        ref_model=frozen_copy(model),
        mixed_precision="bf16" if bf16 else "no",
        compile=compile,
        cuda_graphs=graphs,
    )
    groups = [examples[i : i + batch] for i in range(0, len(examples), batch)]
    if compile != "no" or graphs:
        start = copy.deepcopy(model.state_dict())
        for t, g in enumerate(groups + groups):  # a pass computing the reference, and one reading its cache
            _, seconds = timed(lambda g=g, t=t: training.update([g], t), device)
            what = "recording" if graphs else f"compiling ({compile})"
            print(f"{what}: update {t + 1} took {seconds:.2f} s", flush=True)
        model.load_state_dict(start)
        training.optimizer.state.clear()  # a fresh AdamW: its state is created again at the next step
        training.reference_cache.clear()
    out, losses = [], []
    for p in range(passes):
        out.append([])
        for t, g in enumerate(groups, start=p * len(groups)):
            metrics, seconds = timed(lambda g=g, t=t: training.update([g], t), device)
            out[-1].append(seconds)
            losses.append(metrics["loss"])
    return out, losses[: len(groups)]


def trl_times(model, tokenizer, examples, *, batch: int, stage, device: str, bf16: bool, precompute: bool):
    """(seconds per update, loss per update) of TRL's DPOTrainer.train() over the same batches in the same order."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_dict(
        {
            "prompt_ids": [e.prompt for e in examples],
            "chosen_ids": [e.chosen for e in examples],
            "rejected_ids": [e.rejected for e in examples],
        }
    )
    times, started, losses = [], [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            started.append(__import__("time").perf_counter())

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            times.append(__import__("time").perf_counter() - started[-1])

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            max_steps=len(examples) // batch,
            learning_rate=stage.optim.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=stage.optim.weight_decay,
            max_grad_norm=stage.optim.max_grad_norm,
            beta=stage.loss.beta,
            loss_type=["sigmoid"],
            max_length=None,
            bf16=bf16,
            gradient_checkpointing=False,
            precompute_ref_log_probs=precompute,
            use_cpu=device == "cpu",
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        # the dataset already holds ldyn's token ids: TRL's own tokenization is skipped, and the sampler keeps the
        # order, so every batch equals ldyn's
        DPOTrainer._prepare_dataset = lambda self, dataset, *a, **k: dataset
        trainer = DPOTrainer(
            model=model,
            ref_model=None if precompute else frozen_copy(model),
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return times, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch", type=int, default=4, help="pairs per update")
    parser.add_argument("--updates", type=int, default=6, help="updates per pass (the first is warm-up)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    add_compile_argument(parser)  # ldyn's side
    parser.add_argument(
        "--cuda-graphs",
        type=int,
        default=0,
        metavar="N",
        help="ldyn's side: pad lengths to multiples of N tokens and replay each length's update as a "
        "CUDA graph (a run's cuda_graphs; 0 = off)",
    )
    args = parser.parse_args()
    n = args.batch * args.updates
    cfg, model, tokenizer, inputs = setup(args, "hh_probe_dpo", [f"data.n_train={n}", "probe.every=0"])
    stage = cfg.stages[0]
    examples = stage_examples(inputs.train, get_loss("dpo"), stage)[:n]
    pad = tokenizer.pad_token_id
    shapes = [
        2 * args.batch * max(len(e.prompt) + max(len(e.chosen), len(e.rejected)) for e in examples[i : i + args.batch])
        for i in range(0, n, args.batch)
    ]
    print(
        f"{machine()}; model {args.random_init or args.model} on {args.device}, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, ldyn compiled: {args.compile}, "
        f"CUDA graphs: {f'lengths padded to multiples of {args.cuda_graphs}' if args.cuda_graphs else 'no'}; "
        f"{args.updates} updates of {args.batch} HH pairs "
        f"(padded tokens per update: {min(shapes)}-{max(shapes)}); medians over updates 2..{args.updates}"
    )
    start = copy.deepcopy(model.state_dict())
    settings = dict(batch=args.batch, stage=stage, device=args.device, bf16=args.bf16)
    ours = dict(pad_id=pad, passes=2, compile=args.compile, graphs=args.cuda_graphs)
    (first, cached), losses = ldyn_times(model, examples, **ours, **settings)
    print(f"ldyn: reference in the step {median_range(first[1:])} s, cached {median_range(cached[1:])} s", flush=True)
    rows, trl_losses = {}, {}
    rows["ldyn, reference in the step (first pass)"] = first[1:]
    rows["ldyn, reference cached (later passes)"] = cached[1:]
    for name, precompute in (("reference forward each step", False), ("precompute_ref_log_probs", True)):
        model.load_state_dict(start)
        seconds, trl_losses[name] = trl_times(model, tokenizer, examples, precompute=precompute, **settings)
        rows[f"TRL DPOTrainer, {name}"] = seconds[1:]
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    print(f"{'method':<46}{'s/update median [range]':>28}{'pairs/s':>9}")
    for name, seconds in rows.items():
        print(f"{name:<46}{median_range(seconds):>28}{args.batch / med[name]:>9.2f}")
    keys = list(rows)
    print(
        "loss per update, the same work on both sides: ldyn "
        + " ".join(f"{x:.4f}" for x in losses)
        + "".join(f"; TRL ({k}) " + " ".join(f"{x:.4f}" for x in v) for k, v in trl_losses.items())
    )
    print(
        f"speed-up, reference in the step: {med[keys[2]] / med[keys[0]]:.2f}x; "
        f"reference precomputed/cached: {med[keys[3]] / med[keys[1]]:.2f}x"
    )
    result(
        speedup_in_step=med[keys[2]] / med[keys[0]],
        speedup_cached=med[keys[3]] / med[keys[1]],
        ldyn_s=med[keys[0]],
        trl_s=med[keys[2]],
    )


if __name__ == "__main__":
    main()
