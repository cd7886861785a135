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

from ldyn.config import DataConfig
from ldyn.data.probesets import load_probe_set
from ldyn.data.tokenize import TokenizedRow, collate, tokenize_examples
from ldyn.logprobs.choose import shares_prompts
from ldyn.logprobs.padded import response_logits
from ldyn.logprobs.shared_prompt import encode_prompts, shared_prompt_logits
from ldyn.logprobs.tokens import STAT_NAMES, token_statistics
from ldyn.models.modes import eval_mode, shape_stable_attention
from ldyn.runtime.distributed import gather_to_main, max_over_ranks, rank_and_world

ARGMAX_ALONG = "chosen"


@dataclass(frozen=True)
class ProbeItem:
    example_id: str
    type: str
    prompt: list[int]
    response: list[int]


def probe_items(rows: list[TokenizedRow]) -> list[ProbeItem]:
    return [ProbeItem(row.id, t, row.prompt, ids) for row in rows for t, ids in row.responses.items()]


def load_probe_items(
    source, types, n: int, seed: int, tokenizer, data: DataConfig, n_key: str = "probe.n"
) -> tuple[list[ProbeItem], dict]:
    """A probe set (`data.probesets.load_probe_set`) tokenised as training data is (`data`'s template, lengths and
    truncation):
    its items, and what was loaded for data.json (prompts, types, empty responses left out, truncated rows)."""
    examples, types = load_probe_set(source, types, n, seed, n_key)
    return tokenized_probe_items(examples, types, tokenizer, data)


def tokenized_probe_items(examples, types: list[str], tokenizer, data: DataConfig) -> tuple[list[ProbeItem], dict]:
    """`load_probe_items` of a probe set already read (`load_probe_set`'s examples and types)."""
    rows = tokenize_examples(tokenizer, examples, data)
    report = {
        "probe_prompts": len(rows),
        "probe_types": types,
        "probe_empty_skipped": sum(len(types) - len(r.responses) for r in rows),
        "probe_truncated": sum(r.truncated for r in rows),
    }
    return probe_items(rows), report


def first_prompts(items: list[ProbeItem], n: int) -> list[ProbeItem]:
    """The items of the first `n` prompts (the decomposition's observed set)."""
    keep = set(list(dict.fromkeys(it.example_id for it in items))[:n])
    return [it for it in items if it.example_id in keep]


def length_batches(items: list[ProbeItem], batch_tokens: int) -> list[list[ProbeItem]]:
    """For the plain path: items sorted by prompt + response length, packed as `_pack` does."""
    total = lambda it: len(it.prompt) + len(it.response)  # noqa: E731
    return _pack(sorted(items, key=total), batch_tokens, total)


def prompt_batches(items: list[ProbeItem], batch_tokens: int) -> list[list[list[ProbeItem]]]:
    """For the shared-prompt path: prompts sorted by length and packed so that (prompts × longest prompt) stays
    within batch_tokens; within each such group, its items sorted by response length and packed so that
    (responses × longest response) stays within batch_tokens. Returns `[prompt group][response batch][item]`."""
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
                "topk_mass": mean["topk_mass"],
                "topk_entropy": mean["topk_entropy"],
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
    passes: int = 0,
) -> list[dict]:
    """Evaluate every probe item with `model`; one record per item (plus argmax records along chosen).
    `share_prompt=None` shares prompts where that is faster (`shares_prompts`: on a CPU). The model runs in eval
    mode (no dropout) and without autocast, whatever the trainer set; `passes` pads the plain path with repeated
    forward passes up to that many (processes whose sharded model needs every rank in every pass)."""
    device = next(model.parameters()).device
    share_prompt = shares_prompts(device) if share_prompt is None else share_prompt
    groups = prompt_batches(items, batch_tokens) if share_prompt else [length_batches(items, batch_tokens)]
    bar = tqdm(total=sum(len(g) for g in groups), desc="probe", unit="batch", leave=False, disable=not progress)
    records = []
    with torch.autocast(device.type, enabled=False), eval_mode(model), shape_stable_attention(), bar:
        for group in groups:
            records += (_probe_shared if share_prompt else _probe_plain)(model, group, pad_id, bar)
        for _ in range(passes - (0 if share_prompt else len(groups[0]))):
            response_logits(model, collate([(items[0].prompt, items[0].response)], pad_id).to(device))
    return records


def _probe_plain(model, batches: list[list[ProbeItem]], pad_id: int, bar) -> list[dict]:
    """One full forward pass per batch of (prompt + response) rows."""
    records = []
    for batch_items in batches:
        batch = collate([(it.prompt, it.response) for it in batch_items], pad_id).to(next(model.parameters()).device)
        logits, labels = response_logits(model, batch)
        records += records_for(batch_items, token_statistics(logits, labels), logits.shape[-1])
        bar.update()
    return records


def _probe_shared(model, group: list[list[ProbeItem]], pad_id: int, bar) -> list[dict]:
    """The group's prompts encoded once, then each batch of responses scored against their key/value cache."""
    index = {e: i for i, e in enumerate(dict.fromkeys(it.example_id for b in group for it in b))}
    prompts = {it.example_id: it.prompt for b in group for it in b}
    encoded = encode_prompts(model, [prompts[e] for e in index], pad_id)
    records = []
    for batch_items in group:
        responses = [(index[it.example_id], it.response) for it in batch_items]
        logits, labels = shared_prompt_logits(model, encoded, responses, pad_id)
        records += records_for(batch_items, token_statistics(logits, labels), logits.shape[-1])
        bar.update()
    return records


def shard(items: list[ProbeItem], rank: int, world: int) -> list[ProbeItem]:
    """This process's share of the items: whole prompts, dealt round-robin."""
    return [it for i, group in enumerate(_by_prompt(items)) if i % world == rank for it in group]


def probe_across_ranks(
    model, items: list[ProbeItem], pad_id: int, batch_tokens: int = 4096, progress: bool = True
) -> list[dict]:
    """`probe` split over the processes of a distributed run and gathered on rank 0 (the others get []).

    Each process scores whole prompts of its share on the plain path and runs as many forward passes as the busiest
    one, so a model whose parameters are sharded (ZeRO-3, FSDP), where every forward is a collective, never waits
    forever. Records come back in the order of `items`. In one process this is `probe`.
    """
    rank, world = rank_and_world()
    if world == 1:
        return probe(model, items, pad_id, batch_tokens, progress=progress)
    mine = shard(items, rank, world)
    passes = max_over_ranks(len(length_batches(mine, batch_tokens)))
    records = (
        probe(model, mine, pad_id, batch_tokens, share_prompt=False, progress=progress and rank == 0, passes=passes)
        if mine
        else _idle(model, items, pad_id, passes)
    )
    records = gather_to_main(records)
    order = {(it.example_id, it.type): i for i, it in enumerate(items)}  # argmax records follow their chosen
    return sorted(
        records, key=lambda r: order.get((r["example_id"], r["type"]), order[(r["example_id"], ARGMAX_ALONG)] + 0.5)
    )


def _idle(model, items: list[ProbeItem], pad_id: int, passes: int) -> list[dict]:
    """A process with no prompt of its own still takes part in every forward pass."""
    probe(model, items[:1], pad_id, share_prompt=False, progress=False, passes=passes)
    return []
