"""Probing speed: ldyn against the original code's method, in the same process, on the same items.

The original method (the paper's code) runs one full forward pass per (prompt, response type) at batch size 1 and
takes the log-softmax over the whole vocabulary at every position. ldyn packs items by length, runs each prompt
once and scores all its responses against the prompt's key/value cache, and projects only response positions
onto the vocabulary. Both compute the same records; the script checks that they agree (≤ 1e-4 nats in fp32).

    python benchmarks/probe_speed.py --probe ../shared/data/hh/probe_train.jsonl --n 16
"""

from __future__ import annotations

import argparse
import time

import torch

from ldyn.config import load_config
from ldyn.experiment import load_inputs
from ldyn.logprobs import token_statistics
from ldyn.models import load_model
from ldyn.probing import probe, records_for


@torch.no_grad()
def original_method(model, items, pad_id: int) -> list[dict]:
    """One full forward per (prompt, response), batch 1, log-softmax over every position and the whole vocab."""
    records = []
    for item in items:
        ids = torch.tensor([item.prompt + item.response])
        logp = model(ids).logits[0].log_softmax(-1)  # (T, V): every position, as the original code does
        start = len(item.prompt) - 1
        labels = ids[:, start + 1:]
        # the statistics along the response (for the argmax, ‖A‖, entropy records), from the same logits
        records += records_for([item], token_statistics(logp[None, start:-1], labels), logp.shape[-1])
    return records


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", default="../shared/data/hh/probe_train.jsonl", help="probe set (JSONL)")
    parser.add_argument("--n", type=int, default=16, help="probe prompts")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("hh_probe_sft", [f"data.train={args.probe}", f"probe.path={args.probe}", f"probe.n={args.n}",
                                       "data.n_train=1", f"model.name={args.model}"])
    model, tokenizer = load_model(cfg.model)
    model.eval()
    items = load_inputs(cfg, tokenizer).probes
    pad = tokenizer.pad_token_id
    tokens = sum(len(it.prompt) + len(it.response) for it in items)
    probe(model, items[:8], pad, progress=False)  # warm-up

    results = {}
    results["original (batch 1, full forward)"] = timed(lambda: original_method(model, items, pad))
    results["ldyn, no prompt sharing"] = timed(lambda: probe(model, items, pad, cfg.probe.batch_tokens,
                                                             share_prompt=False, progress=False))
    results["ldyn (default)"] = timed(lambda: probe(model, items, pad, cfg.probe.batch_tokens, progress=False))

    reference = {(r["example_id"], r["type"]): r["logp_sum"] for r in results["original (batch 1, full forward)"][0]}
    base = results["original (batch 1, full forward)"][1]
    prompts = {it.example_id: len(it.prompt) for it in items}
    computed = sum(prompts.values()) + sum(len(it.response) for it in items)
    print(f"model {args.model}: {len(prompts)} prompts, {len(items)} (prompt, response) sequences, {tokens} tokens "
          f"in full, {computed} once each prompt is shared (ratio {tokens / computed:.2f}); "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':<34}{'seconds':>9}{'seq/s':>8}{'speed-up':>10}{'max |Δ logp|':>14}")
    for name, (records, seconds) in results.items():
        diff = max(abs(r["logp_sum"] - reference[(r["example_id"], r["type"])]) for r in records)
        print(f"{name:<34}{seconds:>9.2f}{len(items) / seconds:>8.1f}{base / seconds:>9.2f}×{diff:>14.2e}")


if __name__ == "__main__":
    main()
