"""How well the forward-only readout tracks the observed one-step change, beside the exact first order.

One SGD update of each stage (SFT, and DPO from the base model -- `ldyn decompose` runs the stage alone -- both
on the first HH pairs) is decomposed twice,
by forward-mode (`decompose.method=jvp`: the exact first-order change of the SGD kernel's y⁺ and y⁻ parts) and by
the readout (`decompose.method=readout`: ch1, the LM head's exact term, and ch1 + ch2, the head plus the backbone's
estimate), against every response type of the first `--prompts` probe prompts. Plain SGD without clipping, so the
real step is the SGD kernel's −η∇L and the observed change is what all three predict, to first order. Per response
type: Pearson's r with the observed change, the median relative error |pred − obs| / |obs|, and the share of rows
whose sign agrees. The learning rate: the stage's SGD step is taken with `--lr` (default 1e-4: observed changes of
a few tenths of a nat on SmolLM2, small enough for the exact first order to track them).

    python benchmarks/readout_accuracy.py --data ../shared/data/hh/probe_train.jsonl
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import numpy as np

from ldyn.config import load_config
from ldyn.runs.directory import DECOMPOSITION, RunDir
from ldyn.train.experiment import decompose_step

PREDICTORS = {  # column label -> how a row gives it (jvp row, readout row)
    "ch1": lambda exact, ro: ro["readout/head_positive"] + ro.get("readout/head_negative", 0.0),
    "ch1+ch2": lambda exact, ro: ro["sgd_positive"] + ro.get("sgd_negative", 0.0),
    "exact": lambda exact, ro: exact["sgd_positive"] + exact.get("sgd_negative", 0.0),
}


def decomposed(stage: str, method: str, args, out: str) -> list[dict]:
    overrides = [
        "model.dtype=float32",
        f"data.train={args.data}",
        f"probe.path={args.data}",
        f"data.n_train={args.pairs}",
        "data.skip_empty=true",
        f"decompose.n={args.prompts}",
        f"decompose.method={method}",
        f"stages.{stage}.optim.name=sgd",
        f"stages.{stage}.optim.lr={args.lr}",
        f"stages.{stage}.optim.max_grad_norm=0",
        f"stages.{stage}.optim.warmup_steps=0",
        f"output_dir={out}",
        *args.set,
    ]
    cfg = load_config(args.recipe, overrides)
    run = decompose_step(cfg, stage, overwrite=True)
    return sorted(RunDir(run.path).read(DECOMPOSITION), key=lambda r: (r["example_id"], r["type"]))


def scores(observed: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    r = float(np.corrcoef(observed, predicted)[0, 1]) if len(observed) > 2 else float("nan")
    rel = float(np.median(np.abs(predicted - observed) / np.maximum(np.abs(observed), 1e-12)))
    sign = float(np.mean(np.sign(predicted) == np.sign(observed)))
    return r, rel, sign


def table(stage: str, exact: list[dict], readout: list[dict]) -> list[str]:
    by_type = defaultdict(list)
    for a, b in zip(exact, readout):
        assert (a["example_id"], a["type"]) == (b["example_id"], b["type"])
        by_type[a["type"]].append((a, b))
    lines = [
        f"| {stage} type | rows | " + " | ".join(f"{p}: r, med. rel. err, sign" for p in PREDICTORS) + " |",
        "|---|---:|" + "---|" * len(PREDICTORS),
    ]
    for t, pairs in sorted(by_type.items()) + [("all", [p for ps in by_type.values() for p in ps])]:
        obs = np.array([a["observed"] for a, _ in pairs])
        cells = []
        for fn in PREDICTORS.values():
            r, rel, sign = scores(obs, np.array([fn(a, b) for a, b in pairs]))
            cells.append(f"{r:.2f}, {rel:.2f}, {100 * sign:.0f}%")
        lines.append(f"| {t} | {len(pairs)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/hh/probe_train.jsonl")
    parser.add_argument("--recipe", default="smollm2_sft_dpo")
    parser.add_argument("--stages", default="sft,dpo")
    parser.add_argument("--prompts", type=int, default=8, help="observed probe prompts (all their types)")
    parser.add_argument("--pairs", type=int, default=4, help="the update batch: the first N pairs")
    parser.add_argument("--lr", type=float, default=1e-4, help="the SGD step's learning rate")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages.split(","):
            exact = decomposed(stage, "jvp", args, f"{tmp}/{stage}-jvp")
            readout = decomposed(stage, "readout", args, f"{tmp}/{stage}-readout")
            scale = np.median([abs(r["observed"]) for r in exact])
            print(f"\n{stage}: one SGD update (lr {args.lr}), median |observed| {scale:.3g} nats\n")
            print("\n".join(table(stage, exact, readout)))


if __name__ == "__main__":
    main()
