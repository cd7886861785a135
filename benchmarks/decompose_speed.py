"""The A·K·G decomposition of one update against a probe batch, as a ratio to the update itself.

A DPO update of 4 HH pairs (ldyn's trainer, reference log-probs cached) is decomposed by `DecompositionCallback`
exactly as `decompose.every` does in a run: the update directions g⁺ and g⁻, one forward-mode JVP per parameter
step (the optimizer's real step and the SGD kernel's y⁺ and y⁻ parts), the observed change (a forward at θ_{t+1})
and the mass statistics. The probe batch is the first N probe prompts with the given response types: by default
chosen and rejected of 4 prompts, 8 sequences, the size of the update batch itself.
Five variants decompose every update side by side: forward-mode with g± from a forward and backward of their own
(`update_directions`, as under several processes, autocast or a compiled forward), forward-mode with g± from the
training step's own graph and gradient (`UpdateDirections.from_step`: the default in one eager process), central
differences (`decompose.method=central`, g± from the step too) and one-sided differences for the SGD kernel's
parts (`decompose.method=one_sided`), and the forward-only readout (`decompose.method=readout`: the head's exact
term plus the backbone's estimate, `dynamics/readout.py`); the accuracy of the differences is reported against the
forward-mode predictions of the same updates (the readout's, against the observed change: `readout_accuracy.py`).
A breakdown times each part once more on its own.

    python benchmarks/decompose_speed.py --data ../shared/data/hh/probe_train.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from common import add_common_arguments, machine, median_range, result, setup, timed

from ldyn.dynamics.akg import decompose, logit_jvp, parameters, update_directions
from ldyn.dynamics.probing import whole_prompt_batches
from ldyn.logprobs.choose import rows_logits
from ldyn.logprobs.shared_prompt import SharedRows
from ldyn.losses import get_loss
from ldyn.models.pretrained import frozen_copy
from ldyn.runs.directory import DECOMPOSITION, DECOMPOSITION_TIMES, RunDir
from ldyn.train.callbacks import DecompositionCallback
from ldyn.train.experiment import stage_examples
from ldyn.train.trainer import Trainer, batches


class OwnBackward(DecompositionCallback):
    """g⁺ and g⁻ from a forward and backward of their own (`update_directions`), not from the training step's graph
    and gradient: as under several processes, autocast or a compiled forward."""

    def on_step_start(self, state) -> None:
        shared, state.step_graph = state.step_graph, False
        super().on_step_start(state)
        state.step_graph = shared


VARIANTS = {
    "own_backward": OwnBackward,
    "jvp": DecompositionCallback,
    "central": DecompositionCallback,
    "one_sided": DecompositionCallback,
    "readout": DecompositionCallback,
}
LABELS = {
    "own_backward": "decomposition: JVPs, g± by their own backward",
    "jvp": "decomposition: JVPs, g± from the step",
    "central": "decomposition: central differences, g± from step",
    "one_sided": "decomposition: y± parts one-sided, g± from step",
    "readout": "decomposition: readout (forward passes only)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--prompts", type=int, default=4, help="probe prompts in the observed batch")
    parser.add_argument(
        "--types",
        default="chosen,rejected",
        help="their response types (comma-separated; 'auto' for all of the paper's)",
    )
    parser.add_argument("--updates", type=int, default=4, help="decomposed updates (the first is warm-up)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"which to run side by side (comma-separated, of {','.join(VARIANTS)}; accuracy needs jvp)",
    )
    args = parser.parse_args()
    variants = [name for name in args.variants.split(",") if name]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    cfg, model, tokenizer, inputs = setup(
        args,
        "hh_probe_dpo",
        [
            "data.n_train=16",
            f"probe.n={args.prompts}",
            f"probe.types={args.types}",
            "probe.every=0",
            "decompose.every=1",
        ],
    )
    from accelerate import Accelerator

    stage, spec, pad = cfg.stages[0], get_loss("dpo"), tokenizer.pad_token_id
    examples = stage_examples(inputs.train, spec, stage)
    items = inputs.probes
    observed_tokens = sum(len(it.prompt) + len(it.response) for it in items)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: RunDir(f"{tmp}/{name}") for name in variants}
        method = {name: "jvp" if name == "own_backward" else name for name in variants}
        callbacks = [
            VARIANTS[name](
                runs[name], items, pad, every=1, batch_tokens=cfg.decompose.batch_tokens, method=method[name]
            )
            for name in variants
        ]
        trainer = Trainer(
            model,
            spec,
            stage.loss,
            stage.optim,
            accelerator=Accelerator(cpu=args.device == "cpu"),
            pad_id=pad,
            ref_model=frozen_copy(model),
            callbacks=callbacks,
        )
        for e in examples:  # the reference log-probs are cached in a run's steady state
            trainer.reference_logps([e], torch.float32)
        data = batches(examples, stage.batch_size, seed=0)
        trainer.fit(data, args.updates)
        times = {name: run.read(DECOMPOSITION_TIMES)[1:] for name, run in runs.items()}
        records = {name: run.read(DECOMPOSITION) for name, run in runs.items()}
    update = [r["update_seconds"] for r in times[variants[0]]]
    print(
        f"{machine()}; model {args.random_init or args.model} on {args.device}, fp32; update: DPO, "
        f"{stage.batch_size} HH pairs; probe batch: {len(items)} sequences ({args.prompts} prompts × "
        f"{args.types}), {observed_tokens} tokens; medians over {len(update)} updates after warm-up"
    )
    print(f"{'what':<52}{'seconds median [range]':>26}{'× update':>10}")
    u = statistics.median(update)
    print(f"{'training update (forward, backward, AdamW)':<52}{median_range(update):>26}{1.0:>10.2f}")
    ratios = {}
    for name in variants:
        label = LABELS[name]
        seconds = [r["seconds"] for r in times[name]]
        ratios[name] = statistics.median(seconds) / u
        print(f"{label:<52}{median_range(seconds):>26}{ratios[name]:>10.2f}")
    for method in [m for m in ("central", "one_sided") if m in variants and "jvp" in variants]:
        print(f"{method} against forward-mode, same updates (|Δ| / |forward-mode|, over every observed row):")
        for column in ("predicted", "sgd_positive", "sgd_negative"):
            pairs = zip(records[method], records["jvp"])
            rel = [abs(c[column] - j[column]) / max(abs(j[column]), 1e-12) for c, j in pairs]
            print(f"  {column:<14} median {statistics.median(rel):.2e}   max {max(rel):.2e}")

    # the parts, once each, on the state the run ended in
    device = args.device
    examples_now = next(data)
    reference = trainer.reference_logps(examples_now, torch.float32)
    directions, t_dir = timed(lambda: update_directions(model, spec, stage.loss, examples_now, pad, reference), device)
    theta = {k: v.clone() for k, v in parameters(model).items()}
    tangent = {k: -stage.optim.lr * g for k, g in directions.positive.items()}
    after = {k: theta[k] + tangent[k] for k in theta}
    parts = {"update directions g⁺, g⁻ (y⁺, y⁻ rows: forward+backward)": t_dir}
    t_jvp = t_fwd = t_all = 0.0
    for group in whole_prompt_batches(items, cfg.decompose.batch_tokens):
        batch = SharedRows.of([(it.example_id, it.prompt, it.response) for it in group])  # as the callback does
        t_jvp += timed(lambda b=batch: logit_jvp(model, theta, tangent, b, pad), device)[1]
        with torch.no_grad():
            t_fwd += timed(lambda b=batch: rows_logits(model, b, pad, after), device)[1]
        t_all += timed(
            lambda b=batch: decompose(
                model, theta, after, {"step": tangent, "sgd_positive": tangent, "sgd_negative": tangent}, b, pad
            ),
            device,
        )[1]
    parts["one JVP over the probe batch (per parameter step)"] = t_jvp
    parts["forward at θ_{t+1} over the probe batch (observed)"] = t_fwd
    parts["decompose(): 3 JVPs + observed + statistics"] = t_all
    for name, seconds in parts.items():
        print(f"  {name:<50}{seconds:>26.3f}{seconds / u:>10.2f}")
    result(update_s=u, **{f"ratio_{name}": ratio for name, ratio in ratios.items()})


if __name__ == "__main__":
    main()
