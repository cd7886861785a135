"""What every benchmark script shares: loading the model (or a random-weight copy of its architecture), the HH
data as ldyn tokenizes it, and timing with medians.

Random weights (`--random-init DIR`, a directory with a model's config.json and tokenizer files) time exactly as
the trained model does -- the cost depends only on shapes -- and let the benchmarks run where the weights cannot
be copied (e.g. a GPU machine without the embedded model's package).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import get_args, get_type_hints

import torch

from ldyn.config import RunConfig, load_config
from ldyn.errors import LdynError
from ldyn.models.load import load_model
from ldyn.models.pretrained import prepare
from ldyn.runtime.allocator import keep_freed_memory
from ldyn.train.experiment import Inputs, load_inputs


def add_common_arguments(parser) -> None:
    parser.add_argument(
        "--data",
        default="../shared/data/hh/probe_train.jsonl",
        help="the HH probe set (JSONL): training pairs and probe responses",
    )
    parser.add_argument("--model", default="smollm2", help="model name or path (default: the embedded SmolLM2)")
    parser.add_argument(
        "--random-init",
        metavar="DIR",
        help="use a random-weight model with the config and "
        "tokenizer found in DIR instead of --model (same shapes, same timings)",
    )
    parser.add_argument(
        "--config-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --random-init: a config field changed before the model is built, e.g. num_hidden_layers=16 "
        "(repeatable; VALUE as JSON, so a larger model of the same family can be timed)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave malloc as glibc sets it (the `ldyn` command keeps freed memory: ldyn.runtime.allocator)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override applied last, e.g. --set data.max_length=128 (repeatable)",
    )


def add_compile_argument(parser) -> None:
    """--compile: the training forward's decoder layers compiled in this mode (a run's `compile`, models.compiled)."""
    modes = get_args(get_type_hints(RunConfig)["compile"])  # the modes a run's config allows
    parser.add_argument(
        "--compile",
        default="no",
        choices=modes,
        help="compile the training forward's decoder layers in this torch.compile mode",
    )


def setup(args, recipe: str, overrides: list[str]) -> tuple[RunConfig, torch.nn.Module, object, Inputs]:
    """(config, model on args.device, tokenizer, tokenized inputs) for `recipe` pointed at args.data."""
    prepare_process(args)
    try:
        cfg = load_config(
            recipe,
            [f"data.train={args.data}", f"probe.path={args.data}", f"model.name={args.model}", *overrides, *args.set],
        )
        model, tokenizer = load(args, cfg)
        inputs = load_inputs(cfg, tokenizer)
    except LdynError as e:  # bad input: one line naming the file, as the CLI prints it
        sys.exit(f"benchmark: error: {e}")
    return cfg, model.to(args.device), tokenizer, inputs


def prepare_process(args) -> None:
    """The process settings every benchmark runs under: torch's thread count, and freed memory kept as the `ldyn`
    command keeps it (ldyn.runtime.allocator) unless --glibc-defaults."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.glibc_defaults:
        keep_freed_memory()


def load(args, cfg: RunConfig):
    if args.config_set and not args.random_init:  # a trained checkpoint's shapes are its own
        sys.exit("benchmark: error: --config-set changes a random-weight model's config: give --random-init DIR")
    if not args.random_init:
        return load_model(cfg.model)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(args.random_init)
    for item in args.config_set:
        key, _, value = item.partition("=")
        setattr(config, key, json.loads(value))
    config._attn_implementation = cfg.model.attn_implementation
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, cfg.model.dtype))
    return prepare(model, AutoTokenizer.from_pretrained(args.random_init))


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device="cpu"):
    """(result, seconds) of one call, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def median_range(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.3f} [{min(seconds):.3f}-{max(seconds):.3f}]"


def result(**figures) -> None:
    """The benchmark's headline figures as one machine-readable line (`run_all.py` collects them)."""
    print("RESULT " + json.dumps(figures), flush=True)


def machine() -> str:
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
