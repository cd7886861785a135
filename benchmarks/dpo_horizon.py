"""A long DPO run as a user starts it: `ldyn run` of off-policy DPO from SmolLM2 for 500 updates, timed end to end.

The run is `paper_dpo` (the HH probe file, batch 2, β 0.1) with the long suite's settings (`paper_cpu_long`):
RMSprop lr 1e-5, sequences of at most 128 tokens (prompts 64), 125 training pairs so that 500 updates are the paper's
8 passes, 12 probed prompts every 50 updates. It prints the wall time of the whole run (model loading, the
reference log-probs, every update, every probe round, figures) and splits it into updates (the reference forward
of the first pass included) and probing from the run's own files. Issue 19's target: under 20 minutes on 2 CPU cores.

    python benchmarks/dpo_horizon.py --data ../shared/data/hh/probe_train.jsonl [--updates 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import add_common_arguments, machine, prepare_process, result

from ldyn.config import load_config
from ldyn.errors import LdynError
from ldyn.train.experiment import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--updates", type=int, default=500, help="DPO updates (default 500)")
    parser.add_argument("--probe-every", type=int, default=50, help="probe 12 prompts every N updates (0: never)")
    args = parser.parse_args()
    if args.random_init:
        sys.exit("dpo_horizon: --random-init is not supported: the run loads its model by name")
    prepare_process(args)
    pairs = max(1, args.updates * 2 // 8)  # 8 passes at batch 2
    with tempfile.TemporaryDirectory() as out:
        where = [f"data.train={args.data}", f"probe.path={args.data}", f"model.name={args.model}", f"output_dir={out}"]
        sizes = [f"data.n_train={pairs}", "data.max_length=128", "data.max_prompt_length=64", "probe.n=12"]
        steps = [f"probe.every={args.probe_every}", "checkpoint_every=0", f"stages.dpo.steps={args.updates}"]
        optim = ["stages.dpo.optim.name=rmsprop", "stages.dpo.optim.lr=1e-5"]
        overrides = [*where, *sizes, *steps, *optim, *args.set]
        try:
            cfg = load_config("paper_dpo", overrides)
        except LdynError as e:
            sys.exit(f"dpo_horizon: error: {e}")
        start = time.perf_counter()
        run(cfg)
        wall = time.perf_counter() - start
        metrics = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        probe_file = Path(out) / "probe_times.jsonl"
        probes = [json.loads(line) for line in probe_file.read_text().splitlines()] if probe_file.is_file() else []
    updates = [m["time/update_s"] for m in metrics]
    train, probe = sum(updates), sum(p.get("seconds", 0.0) for p in probes)
    malloc = "glibc defaults" if args.glibc_defaults else "keeping freed memory"
    print(
        f"{machine()}; model {args.model}; DPO, {args.updates} updates of 2 HH pairs ({pairs} pairs, 8 passes), "
        f"≤128 tokens, RMSprop; malloc: {malloc}"
    )
    print(f"{'whole run (wall)':<40}{wall / 60:>10.1f} min")
    print(f"{'  updates (sum), median per update':<40}{train / 60:>10.1f} min   {statistics.median(updates):.2f} s")
    print(f"{'  probe rounds (sum)':<40}{probe / 60:>10.1f} min   {len(probes)} rounds")
    print(f"{'  the rest (loading, figures)':<40}{(wall - train - probe) / 60:>10.1f} min")
    print(
        f"target: a 500-update run under 20 min -> {'met' if wall < 1200 * args.updates / 500 else 'missed'}"
        + ("" if args.updates == 500 else f" (scaled to {args.updates} updates)")
    )
    result(updates=args.updates, wall_s=wall, train_s=train, probe_s=probe, update_s=statistics.median(updates))


if __name__ == "__main__":
    main()
