"""Which cheaper settings keep a run's picture: a finished run against variants of it, claims and curves side by side.

A suite's cost is set by a few settings that the paper does not fix at CPU scale: the batch size (fewer, larger
updates per pass), the sequence length (fewer tokens per update) and how often and how many prompts are probed
(`probe_subsets.py` measures the last two without training). This reads a reference run and variants of it that
were trained with one setting changed, and prints, per run, what it cost (updates and probing, from its own
files) and, per claim, each run's verdict and numbers; then, per stage, each probed type's mean change in the
reference and in each variant, with the share of types whose sign agrees and the Pearson r over the types.
Nothing is trained, so it takes seconds. The variants are made with `ldyn run`, e.g. (docs/paper.md):

    ldyn run runs/paper_cpu_500/p500_sft_dpo/config.yaml name=len96 output_dir=runs/p500_settings/len96 \
        data.max_length=96 data.max_prompt_length=48
    python benchmarks/suite_settings.py runs/paper_cpu_500/p500_sft_dpo runs/p500_settings/len96
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ldyn.errors import LdynError
from ldyn.paper.claims import NA, check_claims
from ldyn.paper.stages import Stage
from ldyn.runs.directory import PROBE_TIMES, Run, RunDir, load_run
from ldyn.schema import flatten, to_dict


def changed(reference: Run, variant: Run) -> str:
    ignore = ("name", "output_dir")
    a, b = flatten(to_dict(reference.config)), flatten(to_dict(variant.config))
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in ignore]
    return ", ".join(f"{k}={b.get(k)}" for k in keys) or "nothing"


def cost(run: Run) -> str:
    """Minutes of updates per stage and of probing, from the run's metrics and probe_times rows."""
    parts = []
    for s in run.config.stages:
        times = [m["time/update_s"] for m in run.metrics if m.get("stage") == s.name and "time/update_s" in m]
        if times:
            parts.append(f"{s.name} {len(times)} × {np.median(times):.2f} s = {sum(times) / 60:.1f} min")
    rounds = RunDir(run.path).read(PROBE_TIMES)
    probing = sum(r.get("seconds", 0.0) for r in rounds) / 60
    total = sum(m.get("time/update_s", 0.0) for m in run.metrics) / 60 + probing
    return f"{'; '.join(parts)}; probing {len(rounds)} rounds = {probing:.1f} min; total {total:.1f} min"


def type_changes(run: Run) -> dict[str, dict[str, float]]:
    """stage -> probed type -> mean change over the probed prompts from the stage's first probe to its last."""
    out = {}
    for s in run.config.stages:
        stage = Stage(run, s.name)
        out[s.name] = {t: stage.delta(t) for t in [*stage.types(), "argmax"] if stage.has(t)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="the run as the suite trains it")
    parser.add_argument("variants", nargs="+", help="runs of the same recipe with one setting changed")
    args = parser.parse_args()
    try:
        runs = [load_run(p) for p in [args.reference, *args.variants]]
    except LdynError as e:
        sys.exit(f"suite_settings: error: {e}")
    reference, variants = runs[0], runs[1:]
    names = [r.label for r in runs]
    width = max(16, *(len(n) + 2 for n in names))
    print("what each run cost (the sum of its updates' and probe rounds' own times; loading and figures left out):")
    print(f"  {reference.label} (reference): {cost(reference)}")
    for v in variants:
        print(f"  {v.label} ({changed(reference, v)}): {cost(v)}")

    print("\nclaims (each run checked alone; the rules of ldyn.paper.claims, unchanged):")
    verdicts = [{v.id: v for v in check_claims([r])} for r in runs]
    for id_ in verdicts[0]:
        if all(vs[id_].verdict == NA for vs in verdicts):
            continue
        print(f"  claim {id_}: {verdicts[0][id_].title}")
        for name, vs in zip(names, verdicts, strict=True):
            print(f"    {name:<{width}}{vs[id_].verdict:<16}{vs[id_].measured}")

    print("\neach probed type's mean change over a stage (nats), reference | variants:")
    changes = [type_changes(r) for r in runs]
    for stage in changes[0]:
        types = [t for t in changes[0][stage] if all(t in c.get(stage, {}) for c in changes)]
        if not types:
            continue
        print(f"  stage {stage}: {'type':<20}" + "".join(f"{n:>{width}}" for n in names))
        for t in types:
            print(f"  {'':<{len(stage) + 8}}{t:<20}" + "".join(f"{c[stage][t]:>{width}.1f}" for c in changes))
        ref = np.array([changes[0][stage][t] for t in types])
        for name, c in zip(names[1:], changes[1:], strict=True):
            var = np.array([c[stage][t] for t in types])
            same = np.mean(np.sign(var) == np.sign(ref))
            r = np.corrcoef(ref, var)[0, 1] if len(types) > 2 else float("nan")
            print(f"  {'':<{len(stage) + 8}}{name}: same sign on {same:.0%} of {len(types)} types, Pearson r {r:.3f}")


if __name__ == "__main__":
    main()
