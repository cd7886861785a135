"""Training throughput as a fraction of this machine's matrix-multiply peak, both measured in the same run.

The peak is the best median over square matrix products (1024² to 4096²) in the training precision. Training
runs ldyn's trainer on HH pairs (DPO with cached reference log-probs, or SFT on chosen) and counts the useful
matmul work of each update as 6 · (N_body · tokens + N_head · scored tokens): forward and backward through every
non-embedding weight for each distinct token (a prompt shared by chosen and rejected counts once; padding not at
all), and through the output projection only where a response token is scored -- the work the update needs,
whatever the implementation. Attention scores and the optimizer are not counted. With --bf16 the forward and
backward run under bf16 autocast and the peak is the bf16 peak (probes would stay fp32).

    python benchmarks/train_throughput.py --data ../shared/data/hh/probe_train.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections import Counter

import torch
from common import add_common_arguments, add_compile_argument, machine, median_range, result, setup, timed

from ldyn.losses import get_loss
from ldyn.models.pretrained import frozen_copy
from ldyn.train.experiment import stage_examples
from ldyn.train.trainer import Trainer


def matmul_peak(dtype: torch.dtype, device: str, repeats: int = 5) -> tuple[float, int]:
    """(best median FLOP/s over sizes, that size) of square matrix products."""
    best = (0.0, 0)
    calls = 1 if device == "cpu" else 50  # products per timing: a GPU needs many to outlast the timer
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

        def products(a=a, b=b):
            for _ in range(calls):
                a @ b

        timed(products, device)
        seconds = statistics.median(timed(products, device)[1] for _ in range(repeats)) / calls
        best = max(best, (2 * n**3 / seconds, n))
    return best


def update_flops(model, examples, pairs: bool) -> float:
    head = model.get_output_embeddings().weight.numel()
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    embed = 0 if tied else model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - head - embed
    responses = sum(len(e.chosen) + (len(e.rejected) if pairs else 0) for e in examples)
    tokens = sum(len(e.prompt) for e in examples) + responses
    return 6 * (body * tokens + head * responses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--loss", default="dpo", choices=["dpo", "sft"])
    parser.add_argument("--batch", type=int, default=4, help="examples (pairs for DPO) per update")
    parser.add_argument("--updates", type=int, default=6, help="timed updates (after one warm-up)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, measured against the bf16 peak")
    add_compile_argument(parser)
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first (compiling takes several)")
    parser.add_argument(
        "--group-by-length",
        action="store_true",
        help="batch examples of similar length together (transformers' group_by_length), so that little of "
        "each batch is padding",
    )
    parser.add_argument(
        "--operators",
        action="store_true",
        help="profile the timed updates by operator: the time in matrix products, the bound it sets on useful "
        "work (every other operator at zero cost), and the largest other operators",
    )
    args = parser.parse_args()
    from accelerate import Accelerator

    n = args.batch * (args.updates + args.warmup)
    cfg, model, tokenizer, inputs = setup(args, "hh_probe_dpo", [f"data.n_train={n}", "probe.every=0"])
    stage, spec = cfg.stages[0], get_loss(args.loss)
    examples = stage_examples(inputs.train, spec, stage)[:n]
    if args.group_by_length:
        examples.sort(key=lambda e: len(e.prompt) + max(len(e.chosen), len(e.rejected) if spec.needs_rejected else 0))
    trainer = Trainer(
        model,
        spec,
        stage.loss,
        stage.optim,
        accelerator=Accelerator(cpu=args.device == "cpu"),
        pad_id=tokenizer.pad_token_id,
        ref_model=frozen_copy(model) if spec.needs_reference else None,
        mixed_precision="bf16" if args.bf16 else "no",
        compile=args.compile,
    )
    if spec.needs_reference:  # a run's steady state: reference log-probs cached
        trainer.reference_logps(examples, torch.float32)
    groups = [examples[i : i + args.batch] for i in range(0, n, args.batch)]
    seconds, rates, operators, flops = [], [], Counter(), 0.0
    for t, group in enumerate(groups):
        timing = t >= args.warmup
        with torch.profiler.profile() if args.operators and timing else contextlib.nullcontext() as prof:
            _, s = timed(lambda g=group, t=t: trainer.update([g], t), args.device)
        if not timing:
            print(f"warm-up update {t + 1}: {s:.2f} s", flush=True)
        else:
            seconds.append(s)
            flops += update_flops(model, group, spec.needs_rejected)
            rates.append(update_flops(model, group, spec.needs_rejected) / s)
        if prof is not None:
            operators.update({e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()})
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak, size = matmul_peak(dtype, args.device)
    achieved = statistics.median(rates)
    print(
        f"{machine()}; model {args.random_init or args.model} on {args.device}; {args.loss.upper()} updates of "
        f"{args.batch} HH {'pairs' if spec.needs_rejected else 'examples'}, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, compiled: {args.compile}"
        f"{', grouped by length' if args.group_by_length else ''}; medians over {len(seconds)} updates"
    )
    print(f"{'matmul peak, ' + str(dtype).removeprefix('torch.') + f' {size}²':<40}{peak / 1e9:>12.1f} GFLOP/s")
    print(f"{'training update (s) median [range]':<40}{median_range(seconds):>28}")
    print(f"{'training, useful matmul work':<40}{achieved / 1e9:>12.1f} GFLOP/s = {achieved / peak:.0%} of peak")
    if operators:
        print_operators(operators, sum(seconds), flops, peak)
    params = sum(p.numel() for p in model.parameters())
    print(f"{'parameters':<40}{params / 1e6:>12.1f} M")
    result(
        loss=args.loss,
        fraction=achieved / peak,
        peak_gflops=peak / 1e9,
        update_s=statistics.median(seconds),
        params=params,
        bf16=args.bf16,
    )


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def print_operators(operators: Counter, seconds: float, flops: float, peak: float) -> None:
    """Where the timed updates went (profiler self time, which adds a little overhead of its own)."""
    total = sum(operators.values())
    in_matmuls = sum(operators[k] for k in MATMULS)
    print(f"by operator (profiled, {total:.1f} s of self time over {seconds:.1f} s of updates):")
    print(
        f"  matrix products: {in_matmuls:.1f} s ({in_matmuls / total:.0%}); useful work over their time alone "
        f"= {flops / in_matmuls / peak:.0%} of peak (the bound with every other operator free)"
    )
    for key, s in operators.most_common(10):
        if key not in MATMULS:
            print(f"  {key:<60}{s:>8.2f} s ({s / total:.0%})")


if __name__ == "__main__":
    main()
