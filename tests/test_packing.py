"""Packed training passes against the padded plain path, in float64, and the pass plan by hand."""

import pytest
import torch

from ldyn.data.tokenize import collate
from ldyn.logprobs import choose
from ldyn.logprobs import packed as packing
from ldyn.logprobs.packed import pack, packable, packed_logps, plan_passes
from ldyn.logprobs.padded import scored_logps, sequence_logps
from ldyn.models.pretrained import prepare, tiny_model

PROMPTS = [[5, 6, 7], [1, 2], [4, 4, 4, 4, 4], [7]]
RESPONSES = [(0, [8, 9, 10, 11]), (1, [3]), (2, [9, 8]), (3, [6, 5, 4, 3, 2, 1]), (0, [12, 13]), (2, [])]


def plain(model, tokenizer, responses=RESPONSES):
    """The slow twin: every (prompt, response) row padded into one batch, the prompt repeated per response."""
    return sequence_logps(model, collate([(PROMPTS[i], r) for i, r in responses], tokenizer.pad_token_id))


def gradients(model, value):
    model.zero_grad()
    value.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_the_packed_row_of_a_prompt_and_its_two_responses():
    p = pack([[1, 2], [9]], [(0, [3, 4]), (1, [7]), (0, [5])], units=[0])
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5]] and p.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    # the prompt's last position predicts each response's first token; a response's own positions the rest
    assert p.keep.tolist() == [1, 2, 1] and p.targets.tolist() == [3, 4, 5] and p.rows.tolist() == [0, 0, 2]
    expected = [
        [1, 0, 0, 0, 0],  # prompt: causal over the prompt
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # response 0: the prompt and itself
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # response 2: the prompt and itself, never response 0
    ]
    assert p.visible[0, 0].int().tolist() == expected


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_log_probs_and_gradients_equal_the_padded_batch(tokenizer, attention, monkeypatch):
    model, _ = prepare(tiny_model(tokenizer, torch.float64, attention, seed=3), tokenizer)
    monkeypatch.setattr(packing, "PASS_OVERHEAD", 0)  # several passes, each embedded by the one lookup
    assert len(packing.packed_passes(model, PROMPTS, RESPONSES)) > 1
    fast, slow = packed_logps(model, PROMPTS, RESPONSES), plain(model, tokenizer)
    # eager attention takes its softmax in float32: the layouts then agree to float32's precision (transformers
    # 5.25: 7e-9 on these sums), sdpa to float64's
    assert torch.allclose(fast.sum, slow.sum, rtol=0, atol=1e-10 if attention == "sdpa" else 1e-7)
    assert fast.n_tokens.tolist() == slow.n_tokens.tolist() == [4, 1, 2, 6, 2, 0]
    weights = torch.linspace(0.5, 2.0, len(RESPONSES), dtype=torch.float64)  # every row's gradient counts
    atol = 1e-12 if attention == "sdpa" else 1e-6
    for a, b in zip(gradients(model, (fast.sum * weights).sum()), gradients(model, (slow.sum * weights).sum())):
        assert torch.allclose(a, b, rtol=1e-9, atol=atol)


def test_the_padded_batch_scores_only_where_a_token_is_scored(tiny64, tokenizer):
    batch = collate([(PROMPTS[i], r) for i, r in RESPONSES], tokenizer.pad_token_id)
    fast, slow = scored_logps(tiny64, batch), sequence_logps(tiny64, batch)
    assert torch.allclose(fast.sum, slow.sum, rtol=0, atol=1e-10) and fast.n_tokens.tolist() == slow.n_tokens.tolist()
    for a, b in zip(gradients(tiny64, fast.sum.sum()), gradients(tiny64, slow.sum.sum())):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_the_plan_balances_attention_against_the_cost_of_a_pass():
    sizes = [300, 280, 250, 200]
    assert plan_passes(sizes, kappa=0.0, overhead=64) == [[0, 1, 2, 3]]  # attention free: one pass
    assert plan_passes(sizes, kappa=1.0, overhead=0) == [[0], [1], [2], [3]]  # passes free: one unit each
    # κ = 1e-3, overhead 64: one pass costs 1030² κ + 64 = 1125; two (500, 530) 250 + 281 + 128 = 659;
    # three (300, 280, 450) 90 + 78 + 203 + 192 = 563; four 90 + 78 + 63 + 40 + 256 = 527: four passes
    assert plan_passes(sizes, kappa=1e-3, overhead=64) == [[0], [1], [2], [3]]
    # overhead 128: 1189, 787, 755, 783: three passes, the largest first to the emptiest
    assert plan_passes(sizes, kappa=1e-3, overhead=128) == [[0], [1], [2, 3]]


def test_a_model_without_sdpa_or_eager_attention_is_not_packed(tokenizer):
    model, _ = prepare(tiny_model(tokenizer, torch.float64, "sdpa", seed=0), tokenizer)
    assert packable(model)
    model.config._attn_implementation = "flex_attention"  # would not take the 4-D mask as it is
    assert not packable(model)


def test_the_instruments_packed_rows_equal_the_key_value_cache_path(tiny64, monkeypatch):
    """`rows_logits` of shared-prompt rows, packed, against each prompt run once into a cache (its twin), in the
    same order, at the model's own parameters, shifted ones, and in forward mode."""
    from ldyn.dynamics.akg import logit_jvp, parameters
    from ldyn.logprobs.choose import rows_logits
    from ldyn.logprobs.shared_prompt import SharedRows, encode_prompts, shared_prompt_logits
    from ldyn.logprobs.tokens import Scored

    rows = SharedRows(PROMPTS, RESPONSES)
    theta = parameters(tiny64)
    tangent = {
        k: torch.randn(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(1)) * 1e-3
        for k, v in theta.items()
    }
    shifted = {k: v + tangent[k] for k, v in theta.items()}
    for params in (None, shifted):
        fast, scored = rows_logits(tiny64, rows, 0, params)  # packed: the model takes a packed row
        encoded = encode_prompts(tiny64, PROMPTS, 0, params)
        slow, slow_scored = Scored.of_padded(*shared_prompt_logits(tiny64, encoded, RESPONSES, 0, params))
        order = scored.sequence_order()
        assert torch.equal(scored.targets[order], slow_scored.targets)
        assert torch.equal(scored.rows[order], slow_scored.rows) and torch.equal(
            scored.columns[order], slow_scored.columns
        )
        assert torch.allclose(fast[order], slow, rtol=0, atol=1e-10)
    _, _, dfast = logit_jvp(tiny64, theta, tangent, rows)
    monkeypatch.setattr(choose, "packable", lambda model: False)  # the key/value cache path
    _, _, dslow = logit_jvp(tiny64, theta, tangent, rows)
    assert torch.allclose(dfast[order], dslow, rtol=0, atol=1e-10)
