"""Probing: teacher-forced log-probabilities of every response type of a probe set, with the model as it is now.

For each (prompt, response type) we record the summed and mean log-prob, the token count, and three per-token
statistics of the model's distribution along that response: the peakiness ‖A‖_F = sqrt(V - 2 + V·mean_t ‖π_t‖²)
(paper Eq. 27-31, from the per-token *mean of squared norms*), ‖π - e‖ (mean over tokens) and the entropy.
Along the chosen response we also record the teacher-forced argmax response y* (Σ_t log max π_t) and its complement
y^c (Σ_t log(1 - max π_t)) -- measured along *chosen*, not along whichever type came last (the original code's bug).

On a CPU each prompt is run once and all of its responses are scored against its key/value cache
(`shared_prompt_logits`); `share_prompt=False` runs one full forward per (prompt, response), the slow and obviously
correct twin, and the default on a GPU, where extra passes cost more than the tokens they save (`shares_prompts`).
Either way items are packed by length into batches of at most `batch_tokens` padded tokens, and
probes always run in fp32 (no autocast), in no_grad mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ldyn.data.tokenize import TokenizedRow, collate
from ldyn.logprobs import (
    STAT_NAMES,
    encode_prompts,
    response_logits,
    shared_prompt_logits,
    shares_prompts,
    token_statistics,
)

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
    """For the plain path: items sorted by prompt + response length, packed as `_pack` does."""
    total = lambda it: len(it.prompt) + len(it.response)  # noqa: E731
    return _pack(sorted(items, key=total), batch_tokens, total)


def prompt_batches(items: list[ProbeItem], batch_tokens: int) -> list[list[list[ProbeItem]]]:
    """For the shared-prompt path: prompts sorted by length and packed so that (prompts × longest prompt) stays
    within batch_tokens; within each such group, its items sorted by response length and packed so that
    (responses × longest response) stays within batch_tokens. Returns [prompt group][response batch][item]."""
    prompt_groups = _pack(
        sorted(_by_prompt(items), key=lambda g: len(g[0].prompt)), batch_tokens, lambda g: len(g[0].prompt)
    )  # prompts are encoded once per group
    return [
        _pack(
            sorted((it for g in group for it in g), key=lambda it: len(it.response)),
            batch_tokens,
            lambda it: len(it.response),
        )
        for group in prompt_groups
    ]


def whole_prompt_batches(items: list[ProbeItem], batch_tokens: int) -> list[list[ProbeItem]]:
    """Batches of whole prompts, each with all its responses, while (responses × longest response) stays within
    batch_tokens (a prompt with more than that is a batch of its own): for passes that run every prompt of a
    batch once and cannot keep it for the next batch, such as the decomposition's forward-mode JVP."""
    out, current = [], []
    for group in _by_prompt(items):
        joined = current + group
        if current and len(joined) * max(len(it.response) for it in joined) > batch_tokens:
            out.append(current)
            joined = group
        current = joined
    return out + ([current] if current else [])


def _by_prompt(items: list[ProbeItem]) -> list[list[ProbeItem]]:
    """Items grouped by their prompt (example id), in order of first appearance."""
    groups: dict[str, list[ProbeItem]] = {}
    for item in items:
        groups.setdefault(item.example_id, []).append(item)
    return list(groups.values())


def _pack(ordered: list, budget: int, length) -> list[list]:
    """Cut a list sorted by length into batches with (batch size × longest) <= budget. A batch also ends where
    the next length exceeds 1.25 × its first, once it holds budget/8 tokens: less padding, still large matmuls."""
    out, current = [], []
    for x in ordered:
        if current:
            longest, first = length(x), length(current[0])
            full = (len(current) + 1) * longest > budget
            ragged = longest > 1.25 * first and len(current) * longest >= budget // 8
            if full or ragged:
                out.append(current)
                current = []
        current.append(x)
    return out + ([current] if current else [])


def records_for(items: list[ProbeItem], stats: dict[str, torch.Tensor], vocab: int) -> list[dict]:
    """Per-item statistics (sums from `token_statistics`) -> long-format probe records."""
    records = []
    for i, item in enumerate(items):
        n = int(stats["n_tokens"][i])
        mean = {k: float(stats[k][i]) / max(n, 1) for k in STAT_NAMES}  # per-token means
        records.append(
            {
                "example_id": item.example_id,
                "type": item.type,
                "logp_sum": float(stats["logp"][i]),
                "logp_mean": mean["logp"],
                "n_tokens": n,
                "a_norm": math.sqrt(vocab - 2 + vocab * mean["sq_norm"]),
                "pe": mean["pe"],
                "entropy": mean["entropy"],
            }
        )
        if item.type == ARGMAX_ALONG:
            for name, key in (("argmax", "argmax_logp"), ("except_argmax", "except_argmax_logp")):
                records.append(
                    {
                        "example_id": item.example_id,
                        "type": name,
                        "logp_sum": float(stats[key][i]),
                        "logp_mean": mean[key],
                        "n_tokens": n,
                    }
                )
    return records


@torch.no_grad()
def probe(
    model,
    items: list[ProbeItem],
    pad_id: int,
    batch_tokens: int = 4096,
    share_prompt: bool | None = None,
    progress: bool = True,
) -> list[dict]:
    """Evaluate every probe item with `model`; one record per item (plus argmax records along chosen).
    `share_prompt=None` shares prompts where that is faster (`shares_prompts`: on a CPU)."""
    device = next(model.parameters()).device
    share_prompt = shares_prompts(device) if share_prompt is None else share_prompt
    groups = prompt_batches(items, batch_tokens) if share_prompt else [length_batches(items, batch_tokens)]
    bar = tqdm(total=sum(len(g) for g in groups), desc="probe", unit="batch", leave=False, disable=not progress)
    records = []
    with torch.autocast(device.type, enabled=False), bar:
        for group in groups:
            if share_prompt:
                index = {e: i for i, e in enumerate(dict.fromkeys(it.example_id for b in group for it in b))}
                prompts = {it.example_id: it.prompt for b in group for it in b}
                encoded = encode_prompts(model, [prompts[e] for e in index], pad_id)
            for batch_items in group:
                if share_prompt:
                    responses = [(index[it.example_id], it.response) for it in batch_items]
                    logits, labels = shared_prompt_logits(model, encoded, responses, pad_id)
                else:
                    batch = collate([(it.prompt, it.response) for it in batch_items], pad_id).to(device)
                    logits, labels = response_logits(model, batch)
                records += records_for(batch_items, token_statistics(logits, labels), logits.shape[-1])
                bar.update()
    return records
