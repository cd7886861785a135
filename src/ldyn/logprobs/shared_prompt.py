"""The shared-prompt layout: each prompt run once into a key/value cache, its responses scored against it.

Probing uses it (13 responses per prompt make a packed row's attention costly); `padded.response_logits` on the
full sequences is its slow twin (tested)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ldyn.data.tokenize import Batch, collate
from ldyn.logprobs.tokens import run_model


@dataclass
class PromptCache:
    """A batch of prompts, all but their last token, run once: the key/value cache responses are scored against."""

    cache: object | None  # the model's KV cache of the right-padded prompts without their last token
    mask: torch.Tensor  # (P, longest prompt - 1) attention mask of the cached tokens
    prompts: list[list[int]]  # the prompts' token ids


def encode_prompts(model, prompts: list[list[int]], pad_id: int, params: dict | None = None) -> PromptCache:
    """Run every prompt but its last token once (right-padded, so no attention row is ever fully masked).

    The last prompt token is fed with the responses instead, so that the logits predicting each response's
    first token come out of the same forward pass as the rest, already aligned.
    """
    ids, mask = _prompt_ids(prompts, pad_id, next(model.parameters()).device)
    if ids.shape[1] == 0:
        return PromptCache(None, mask, prompts)
    out = run_model(model, params, input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    return PromptCache(out.cache, mask, prompts)


def _prompt_ids(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of every prompt but its last token, right-padded."""
    width = max(len(p) for p in prompts) - 1
    ids = torch.full((len(prompts), width), pad_id, device=device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, : len(p) - 1], mask[i, : len(p) - 1] = torch.tensor(p[:-1]), 1
    return ids, mask


def _response_batch(prompts: list[list[int]], responses: list[tuple[int, list[int]]], pad_id: int) -> Batch:
    """Each row: its prompt's last token, then the response; labels cover the response only."""
    return collate([(prompts[i][-1:], r) for i, r in responses], pad_id)


def shared_prompt_logits(
    model, prompts: PromptCache, responses: list[tuple[int, list[int]]], pad_id: int, params: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `response_logits`, but scoring responses against already encoded prompts.

    responses: (index of its prompt in `prompts`, token ids). Returns (logits, labels) aligned as in
    `response_logits`: logits (N, L, V) with logits[:, i] predicting labels[:, i], labels IGNORE on padding.
    Positions continue each prompt's own length. Equal to the plain computation up to float rounding (tested);
    `response_logits` on full sequences is its slow twin.
    """
    device = prompts.mask.device
    rows = torch.tensor([i for i, _ in responses], device=device)
    batch = _response_batch(prompts.prompts, responses, pad_id).to(device)
    starts = torch.tensor([len(prompts.prompts[i]) - 1 for i, _ in responses], device=device)
    positions = starts[:, None] + torch.arange(batch.input_ids.shape[1], device=device)
    cache = None if prompts.cache is None else _cache_rows(prompts.cache, rows)
    mask = torch.cat([prompts.mask[rows], batch.attention_mask], dim=1)
    logits = run_model(
        model,
        params,
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=cache is not None,
    ).logits
    return logits[:, :-1], batch.labels[:, 1:]


@dataclass
class SharedRows:
    """Responses to a few prompts, to be scored with each prompt run once (`shared_prompt_logits`)."""

    prompts: list[list[int]]  # token ids
    responses: list[tuple[int, list[int]]]  # (index into prompts, response token ids)

    @classmethod
    def of(cls, pairs: list[tuple[str, list[int], list[int]]]) -> SharedRows:
        """From (prompt key, prompt ids, response ids) triples, in order; equal keys share one prompt."""
        index: dict[str, int] = {}
        prompts = []
        for key, prompt, _ in pairs:
            if key not in index:
                index[key] = len(prompts)
                prompts.append(prompt)
        return cls(prompts, [(index[key], response) for key, _, response in pairs])


def _cache_rows(cache, rows: torch.Tensor):
    """A new cache with one copy of its prompt's keys/values per response; `cache` itself is left as it was (it
    serves further batches), and gradients flow back through the selection to the prompt's forward pass."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows)
    return out
