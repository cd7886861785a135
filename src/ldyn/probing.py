"""Probing: teacher-forced log-probabilities of every response type of a probe set, with the model as it is now.

For each (prompt, response type) we record the summed and mean log-prob, the token count, and three per-token
statistics of the model's distribution along that response: the peakiness ‖A‖_F = sqrt(V - 2 + V·mean_t ‖π_t‖²)
(paper Eq. 27-31, from the per-token *mean of squared norms*), ‖π - e‖ (mean over tokens) and the entropy.
Along the chosen response we also record the teacher-forced argmax response y* (Σ_t log max π_t) and its complement
y^c (Σ_t log(1 - max π_t)) -- measured along *chosen*, not along whichever type came last (the original code's bug).

By default each prompt is run once and all of its responses are scored against its key/value cache
(`shared_prompt_logits`); `share_prompt=False` runs one full forward per (prompt, response), the slow and obviously
correct twin. Either way items are packed by length into batches of at most `batch_tokens` padded tokens, and
probes always run in fp32 (no autocast), in no_grad mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ldyn.data.tokenize import TokenizedRow, collate
from ldyn.logprobs import response_logits, shared_prompt_logits, token_statistics

ARGMAX_ALONG = "chosen"


@dataclass(frozen=True)
class ProbeItem:
    example_id: str
    type: str
    prompt: list[int]
    response: list[int]


def probe_items(rows: list[TokenizedRow]) -> list[ProbeItem]:
    return [ProbeItem(row.id, t, row.prompt, ids) for row in rows for t, ids in row.responses.items()]


def length_batches(items: list[ProbeItem], batch_tokens: int) -> list[list[ProbeItem]]:
    """Pack items, sorted by length, into batches whose padded size (rows × longest) stays within batch_tokens."""
    ordered = sorted(items, key=lambda it: len(it.prompt) + len(it.response))
    out, current = [], []
    for item in ordered:
        length = len(item.prompt) + len(item.response)  # the longest so far, since items are sorted
        if current and (len(current) + 1) * length > batch_tokens:
            out.append(current)
            current = []
        current.append(item)
    return out + ([current] if current else [])


def prompt_batches(items: list[ProbeItem], batch_tokens: int) -> list[list[ProbeItem]]:
    """Items sorted by response length, packed so that a batch's padded size -- each of its distinct prompts once,
    plus every response -- stays within batch_tokens (for the shared-prompt path)."""

    def size(batch: list[ProbeItem]) -> int:
        prompts = {it.example_id: len(it.prompt) for it in batch}
        return len(prompts) * max(prompts.values()) + len(batch) * max(len(it.response) for it in batch)

    out, current = [], []
    for item in sorted(items, key=lambda it: (len(it.response), it.example_id)):
        if current and size(current + [item]) > batch_tokens:
            out.append(current)
            current = []
        current.append(item)
    return out + ([current] if current else [])


def records_for(items: list[ProbeItem], stats: dict[str, torch.Tensor], vocab: int) -> list[dict]:
    """Per-item statistics (sums from `token_statistics`) -> long-format probe records."""
    records = []
    for i, item in enumerate(items):
        n = int(stats["n_tokens"][i])
        mean = (lambda key: float(stats[key][i]) / max(n, 1))  # noqa: E731
        records.append({"example_id": item.example_id, "type": item.type, "logp_sum": float(stats["logp"][i]),
                        "logp_mean": mean("logp"), "n_tokens": n,
                        "a_norm": math.sqrt(vocab - 2 + vocab * mean("sq_norm")),
                        "pe": mean("pe"), "entropy": mean("entropy")})
        if item.type == ARGMAX_ALONG:
            for name, key in (("argmax", "argmax_logp"), ("except_argmax", "except_argmax_logp")):
                records.append({"example_id": item.example_id, "type": name, "logp_sum": float(stats[key][i]),
                                "logp_mean": mean(key), "n_tokens": n})
    return records


@torch.no_grad()
def probe(model, items: list[ProbeItem], pad_id: int, batch_tokens: int = 4096, share_prompt: bool = True,
          progress: bool = True) -> list[dict]:
    """Evaluate every probe item with `model`; one record per item (plus argmax records along chosen)."""
    device = next(model.parameters()).device
    records = []
    batches = prompt_batches(items, batch_tokens) if share_prompt else length_batches(items, batch_tokens)
    for group in tqdm(batches, desc="probe", unit="batch", leave=False, disable=not progress):
        with torch.autocast(device.type, enabled=False):
            if share_prompt:
                index = {e: i for i, e in enumerate(dict.fromkeys(it.example_id for it in group))}
                prompts = {it.example_id: it.prompt for it in group}
                logits, labels = shared_prompt_logits(model, [prompts[e] for e in index],
                                                      [(index[it.example_id], it.response) for it in group], pad_id)
            else:
                batch = collate([(it.prompt, it.response) for it in group], pad_id).to(device)
                logits, labels = response_logits(model, batch)
            stats = token_statistics(logits, labels)
        records += records_for(group, stats, logits.shape[-1])
    return records
