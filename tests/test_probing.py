"""Probing: batched equals one-at-a-time, the shared-prompt fast path equals its plain twin."""

import pytest
import torch

from ldyn.data.tokenize import TokenizedRow
from ldyn.dynamics.probing import length_batches, probe, probe_items, prompt_batches
from ldyn.models.pretrained import prepare, tiny_model

ROWS = [
    TokenizedRow("a", [5, 6, 7, 8], {"chosen": [9, 10, 11], "rejected": [12, 13], "irr": [1, 2, 3, 4, 5]}, False),
    TokenizedRow("b", [3], {"chosen": [7, 7, 7, 7], "rejected": [8], "irr": [9, 9]}, False),
    TokenizedRow("c", [1, 2, 3, 4, 5, 6, 7], {"chosen": [2], "rejected": [3, 4, 5], "irr": [6]}, False),
]
KEYS = ("logp_sum", "logp_mean", "n_tokens", "a_norm", "pe", "entropy", "topk_mass", "topk_entropy")


def by_key(records):
    return {(r["example_id"], r["type"]): r for r in records}


def assert_same(a, b, tol):
    a, b = by_key(a), by_key(b)
    assert a.keys() == b.keys()
    for k in a:
        for key in KEYS:
            if key in a[k]:
                assert a[k][key] == pytest.approx(b[k][key], abs=tol, rel=0), (k, key)


@pytest.mark.parametrize("share_prompt", [False, True])
def test_batched_probing_equals_one_at_a_time(tiny64, tokenizer, share_prompt):
    items = probe_items(ROWS)
    batched = probe(
        tiny64, items, tokenizer.pad_token_id, batch_tokens=10_000, share_prompt=share_prompt, progress=False
    )
    single = [
        r
        for it in items
        for r in probe(tiny64, [it], tokenizer.pad_token_id, batch_tokens=1, share_prompt=False, progress=False)
    ]
    assert_same(batched, single, 1e-10)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_shared_prompt_fast_path_matches_plain_in_fp32(tokenizer, attn):
    model, _ = prepare(tiny_model(tokenizer, torch.float32, attn, seed=1, hidden_size=64), tokenizer)
    items = probe_items(ROWS)
    fast = probe(model, items, tokenizer.pad_token_id, share_prompt=True, progress=False)
    plain = probe(model, items, tokenizer.pad_token_id, share_prompt=False, progress=False)
    assert_same(fast, plain, 1e-4)


def test_argmax_records_are_taken_along_chosen(tiny64, tokenizer):
    records = by_key(probe(tiny64, probe_items(ROWS), tokenizer.pad_token_id, progress=False))
    for row in ROWS:
        argmax = records[(row.id, "argmax")]
        assert argmax["n_tokens"] == len(row.responses["chosen"])
        # the argmax path is at least as likely as chosen itself, token by token
        assert argmax["logp_sum"] >= records[(row.id, "chosen")]["logp_sum"]
    assert {t for _, t in records} == {"chosen", "rejected", "irr", "argmax", "except_argmax"}


def test_length_batches_cover_every_item_once_within_budget():
    items = probe_items(ROWS)
    batches = length_batches(items, batch_tokens=16)
    assert sorted(id(i) for b in batches for i in b) == sorted(id(i) for i in items)
    for b in batches:
        assert len(b) == 1 or len(b) * max(len(i.prompt) + len(i.response) for i in b) <= 16


def test_prompt_batches_encode_each_prompt_once_and_respect_the_budget():
    items = probe_items(ROWS)
    groups = prompt_batches(items, batch_tokens=12)
    flat = [i for g in groups for b in g for i in b]
    assert sorted(id(i) for i in flat) == sorted(id(i) for i in items)
    seen = [{i.example_id for b in g for i in b} for g in groups]
    assert sum(len(s) for s in seen) == len(ROWS)  # every prompt lives in exactly one group
    for g, prompts in zip(groups, seen):
        lengths = [len(r.prompt) for r in ROWS if r.id in prompts]
        assert len(lengths) == 1 or len(lengths) * max(lengths) <= 12
        for b in g:
            assert len(b) == 1 or len(b) * max(len(i.response) for i in b) <= 12
