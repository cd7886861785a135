"""Every benchmark in one run, one after the other (never two at once), and the table of docs/benchmarks.md.

Each script runs in its own process with the same data, model and device; its tables print as they come, and its
`RESULT` line feeds the summary at the end: the targets of the speed issues against what this machine measured.

    python benchmarks/run_all.py --data ../shared/data/hh/probe_train.jsonl        # about 45 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import add_common_arguments

HERE = Path(__file__).parent
# (name, script, extra arguments): the order of docs/benchmarks.md
BENCHMARKS = [
    ("probing", "probe_speed.py", ["--n", "16"]),
    ("dpo", "dpo_speed.py", []),
    ("decomposition", "decompose_speed.py", []),
    ("throughput_dpo", "train_throughput.py", ["--loss", "dpo"]),
    ("throughput_sft", "train_throughput.py", ["--loss", "sft"]),
    ("dpo_horizon", "dpo_horizon.py", []),  # the longest: a 500-update run, about 20 minutes
]
# On a GPU: ldyn's DPO update replayed as CUDA graphs (a 135M model is bound by kernel launches there; a run's
# cuda_graphs), and training throughput in bf16 for a model large enough to be compute-bound -- Llama-3.2-1B's
# shapes (with the tokenizer's vocabulary) at random weights, 64 examples (32 pairs) per update, batched by length
GPU_EXTRA = {"dpo": ["--cuda-graphs", "64"]}
LLAMA_1B_SHAPES = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
LLAMA_1B = [f"--config-set={k}={v}" for k, v in LLAMA_1B_SHAPES.items()]
GPU_THROUGHPUT = ["--bf16", "--group-by-length", "--compile", "default", "--warmup", "2"]
GPU_BATCH = {"throughput_dpo": ["--batch", "32"], "throughput_sft": ["--batch", "64"]}


def run(script: str, arguments: list[str]) -> tuple[dict | None, float]:
    """Run one benchmark, echoing its output; returns its RESULT figures (None if it failed) and its seconds."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(HERE / script), *arguments], stdout=subprocess.PIPE, text=True)
    figures = None
    for line in process.stdout:
        if line.startswith("RESULT "):
            figures = json.loads(line.removeprefix("RESULT "))
        else:
            print(line, end="", flush=True)
    if process.wait() != 0:
        print(f"run_all: {script} failed (exit {process.returncode})", file=sys.stderr)
        figures = None
    return figures, time.perf_counter() - started


def extra_arguments(name: str, gpu: bool, random_init: bool) -> list[str]:
    """A benchmark's arguments beyond the common ones: on a GPU, the graphed update and the large bf16 model."""
    if not gpu:
        return []
    if name.startswith("throughput"):
        return GPU_THROUGHPUT + GPU_BATCH[name] + (LLAMA_1B if random_init else [])
    return GPU_EXTRA.get(name, [])


def summary(results: dict[str, dict | None], gpu: bool = False) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows; a benchmark that failed or was skipped shows as not measured. The targets
    are issue 18's for the device: on a GPU the decomposition within 3 updates and bf16 training at 40% of the
    peak (model FLOPs utilisation, useful work only), on a CPU within 2 updates and 60% of the fp32 peak."""

    def get(name, key):
        return (results.get(name) or {}).get(key)

    rows = []
    probe = get("probing", "probe_speedup")
    if probe is not None:
        rows.append(
            (
                "probing ≥ 4× the original method",
                f"{probe:.2f}× (token ratio {get('probing', 'token_ratio'):.2f}×)",
                _verdict(probe >= 4),
            )
        )
    in_step, cached = get("dpo", "speedup_in_step"), get("dpo", "speedup_cached")
    if in_step is not None:
        rows.append(
            (
                "DPO update ≥ 1.5× TRL's DPOTrainer",
                f"{in_step:.2f}× / {cached:.2f}× (in step / cached)",
                _verdict(min(in_step, cached) >= 1.5),
            )
        )
    ratios = {"ratio_jvp": "JVP", "ratio_central": "central differences", "ratio_one_sided": "y± parts one-sided"}
    for key, label in ratios.items():
        ratio = get("decomposition", key)
        if ratio is not None:
            bound = 3 if gpu else 2
            rows.append((f"decomposition ≤ {bound}× an update ({label})", f"{ratio:.2f}×", _verdict(ratio <= bound)))
    for name in ("throughput_dpo", "throughput_sft"):
        fraction = get(name, "fraction")
        if fraction is not None:
            loss, bound = get(name, "loss").upper(), 0.4 if gpu else 0.6
            size = f", {get(name, 'params') / 1e9:.2f}B parameters" if get(name, "params") else ""
            rows.append(
                (
                    f"{loss} training ≥ {bound:.0%} of the {'bf16' if get(name, 'bf16') else 'fp32'} matmul peak "
                    f"(useful work{size})",
                    f"{fraction:.0%} of {get(name, 'peak_gflops'):.0f} GFLOP/s",
                    _verdict(fraction >= bound),
                )
            )
    wall, updates = get("dpo_horizon", "wall_s"), get("dpo_horizon", "updates")
    if wall is not None:
        rows.append(
            (
                "a 500-update DPO run (batch 2, ≤128 tokens) under 20 minutes",
                f"{wall / 60:.1f} min for {updates} updates ({get('dpo_horizon', 'update_s'):.2f} s per update)",
                _verdict(wall < 1200 * updates / 500),
            )
        )
    return rows


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated benchmarks to leave out: " + ", ".join(name for name, _, _ in BENCHMARKS),
    )
    args = parser.parse_args()
    common = ["--data", args.data, "--model", args.model, "--device", args.device]
    common += ["--random-init", args.random_init] if args.random_init else []
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--glibc-defaults"] if args.glibc_defaults else []
    common += [f"--set={s}" for s in args.set] + [f"--config-set={s}" for s in args.config_set]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {name for name, _, _ in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark in --skip: {', '.join(sorted(unknown))}")
    if args.random_init:  # the long run loads its model by name
        skip.add("dpo_horizon")
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    print(f"# run_all: {device}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}; data {args.data}")
    results, seconds = {}, {}
    for name, script, extra in BENCHMARKS:
        if name in skip:
            continue
        extra = [*extra, *extra_arguments(name, args.device == "cuda", bool(args.random_init))]
        print(f"\n## {name}: {script} {' '.join(extra)}", flush=True)
        results[name], seconds[name] = run(script, [*common, *extra])
    print(f"\n## Targets at a glance ({device})\n")
    print("| target | measured | |\n|---|---|---|")
    for target, measured, verdict in summary(results, gpu=args.device == "cuda"):
        print(f"| {target} | {measured} | **{verdict}** |")
    failed = [name for name, figures in results.items() if figures is None]
    print("\n" + ", ".join(f"{name} {s / 60:.1f} min" for name, s in seconds.items()))
    if failed:
        sys.exit(f"run_all: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
