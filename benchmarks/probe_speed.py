"""Probing speed: ldyn against the original code's method, in the same process, on the same items.

The original method (the paper's code) runs one full forward pass per (prompt, response type) at batch size 1 and
takes the log-softmax over the whole vocabulary at every position. ldyn packs items by length and projects only
response positions onto the vocabulary; both of its paths are timed: one pass per sequence, and each prompt run
once with all its responses scored against its key/value cache (the default on a CPU). All compute the same
records; the script prints how far they differ from the original's (≤ 2e-4 nats on sums of 40-300 nats here).

    python benchmarks/probe_speed.py --data ../shared/data/hh/probe_train.jsonl --n 16
"""

from __future__ import annotations

import argparse

import torch
from common import add_common_arguments, machine, result, setup, timed

from ldyn.dynamics.probing import probe, records_for
from ldyn.logprobs.choose import shares_prompts
from ldyn.logprobs.tokens import token_statistics


@torch.no_grad()
def original_method(model, items, pad_id: int) -> list[dict]:
    """One full forward per (prompt, response), batch 1, log-softmax over every position and the whole vocab."""
    records = []
    for item in items:
        ids = torch.tensor([item.prompt + item.response], device=next(model.parameters()).device)
        logp = model(ids).logits[0].log_softmax(-1)  # (T, V): every position, as the original code does
        start = len(item.prompt) - 1
        labels = ids[:, start + 1 :]
        # the statistics along the response (for the argmax, ‖A‖, entropy records), from the same logits
        records += records_for([item], token_statistics(logp[None, start:-1], labels), logp.shape[-1])
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--n", type=int, default=16, help="probe prompts")
    args = parser.parse_args()
    cfg, model, tokenizer, inputs = setup(args, "hh_probe_sft", [f"probe.n={args.n}", "data.n_train=1"])
    items, pad, device = inputs.probes, tokenizer.pad_token_id, args.device
    tokens = sum(len(it.prompt) + len(it.response) for it in items)
    probe(model, items[:8], pad, progress=False)  # warm-up
    original_method(model, items[:8], pad)

    results = {}
    results["original (batch 1, full forward)"] = timed(lambda: original_method(model, items, pad), device)
    for name, share in (("ldyn, one pass per sequence", False), ("ldyn, each prompt run once", True)):
        default = " *" if share == shares_prompts(device) else ""  # ldyn's default on this device
        results[name + default] = timed(
            lambda s=share: probe(model, items, pad, cfg.probe.batch_tokens, share_prompt=s, progress=False), device
        )

    reference = {(r["example_id"], r["type"]): r["logp_sum"] for r in results["original (batch 1, full forward)"][0]}
    base = results["original (batch 1, full forward)"][1]
    prompts = {it.example_id: len(it.prompt) for it in items}
    computed = sum(prompts.values()) + sum(len(it.response) for it in items)
    print(
        f"{machine()}; model {args.random_init or args.model} on {device}: {len(prompts)} prompts, "
        f"{len(items)} (prompt, response) sequences, {tokens} tokens "
        f"in full, {computed} once each prompt is shared (ratio {tokens / computed:.2f})"
    )
    print(f"{'method (* ldyn default here)':<34}{'seconds':>9}{'seq/s':>8}{'speed-up':>10}{'max |Δ logp|':>14}")
    for name, (records, seconds) in results.items():
        diff = max(abs(r["logp_sum"] - reference[(r["example_id"], r["type"])]) for r in records)
        print(f"{name:<34}{seconds:>9.2f}{len(items) / seconds:>8.1f}{base / seconds:>9.2f}×{diff:>14.2e}")
    default = next(name for name in results if name.endswith("*"))
    result(
        probe_speedup=base / results[default][1],
        token_ratio=tokens / computed,
        original_s=base,
        ldyn_s=results[default][1],
    )


if __name__ == "__main__":
    main()
