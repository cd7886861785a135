"""How few probed prompts, and how sparse a schedule, keep a suite's picture: the claims re-checked on subsets.

Probing costs in proportion to the prompts probed and the rounds taken. This reads finished runs (a suite's folder
or run directories), checks the claims on every probed prompt and every round (the reference), then again on
random subsets of k prompts (the same k in every run, drawn per repeat from the prompts the runs share) and on
every second or fourth round, and prints, per claim, the share of draws whose verdict matches the reference.
Nothing is trained, so it takes seconds; the cost side is the run's own `probe_times.jsonl`.

    python benchmarks/probe_subsets.py runs/paper_cpu_500 [--sizes 4 8 12] [--draws 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace

from ldyn.errors import LdynError
from ldyn.paper.claims import NA, check_claims, read_toys
from ldyn.paper.report import collect
from ldyn.runs.directory import PROBE_TIMES, Run, RunDir


def keep_prompts(runs: list[Run], ids: set[str]) -> list[Run]:
    return [replace(r, probes=[p for p in r.probes if p["example_id"] in ids]) for r in runs]


def keep_rounds(runs: list[Run], every: int) -> list[Run]:
    """Every `every`-th probe round of each stage, always with the stage's first and last round (the changes the
    claims read run from a stage's first probe to its last)."""
    out = []
    for r in runs:
        kept = []
        for stage in dict.fromkeys(p["stage"] for p in r.probes):
            steps = sorted({p["step"] for p in r.probes if p["stage"] == stage})
            chosen = set(steps[::every]) | {steps[0], steps[-1]}
            kept += [p for p in r.probes if p["stage"] == stage and p["step"] in chosen]
        out.append(replace(r, probes=kept))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="a suite's folder or run directories")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12], help="probed prompts per subset")
    parser.add_argument("--draws", type=int, default=20, help="random subsets per size (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        c = collect(args.paths)
    except LdynError as e:
        sys.exit(f"probe_subsets: error: {e}")
    toys = read_toys(c.toy_dirs)
    reference = {v.id: v for v in check_claims(c.runs, toys, c.winrates)}
    ids = sorted(set.intersection(*({p["example_id"] for p in r.probes} for r in c.runs if r.probes)), key=str)
    rng = random.Random(args.seed)
    columns = {}
    for k in [k for k in args.sizes if k < len(ids)]:
        subsets = [set(rng.sample(ids, k)) for _ in range(args.draws)]
        draws = [check_claims(keep_prompts(c.runs, subset), toys, c.winrates) for subset in subsets]
        columns[f"{k} prompts"] = [{v.id: v.verdict for v in d} for d in draws]
    for every in (2, 4):
        sparse = check_claims(keep_rounds(c.runs, every), toys, c.winrates)
        columns[f"1/{every} rounds"] = [{v.id: v.verdict for v in sparse}]
    seconds = sum(row.get("seconds", 0.0) for r in c.runs for row in RunDir(r.path).read(PROBE_TIMES))
    print(f"{len(c.runs)} runs, {len(ids)} prompts probed in every run; probing took {seconds / 60:.1f} min in all")
    print("share of draws whose verdict matches the reference's (every prompt, every round):")
    print(f"{'claim':<7}{'reference':<16}" + "".join(f"{name:>14}" for name in columns))
    agree = {name: [] for name in columns}
    for id_, v in reference.items():
        if v.verdict == NA:
            continue
        cells = []
        for name, draws in columns.items():
            share = sum(d[id_] == v.verdict for d in draws) / len(draws)
            agree[name].append(share)
            cells.append(f"{share:>14.2f}")
        print(f"{id_:<7}{v.verdict:<16}" + "".join(cells))
    print(f"{'mean':<23}" + "".join(f"{sum(a) / max(len(a), 1):>14.2f}" for a in agree.values()))


if __name__ == "__main__":
    main()
