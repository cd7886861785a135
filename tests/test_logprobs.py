"""The one log-prob function against a plain per-token loop, in float64."""

import math

import pytest
import torch

from ldyn.data.tokenize import IGNORE, collate
from ldyn.logprobs.padded import response_logits, sequence_logps
from ldyn.logprobs.tokens import STAT_NAMES, TOP_K, token_statistics


def loop_logps(model, prompt, response):
    """Obviously correct: one full forward, then Σ_t log softmax(z_{t-1})[y_t] over response positions."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0]
    total = 0.0
    for t in range(len(prompt), len(prompt) + len(response)):
        total += torch.log_softmax(logits[t - 1], -1)[ids[0, t]].item()
    return total


SEQS = [([5, 6, 7], [8, 9, 10, 11]), ([1, 2], [3]), ([4, 4, 4, 4, 4], [9, 8]), ([7], [6, 5, 4, 3, 2, 1])]


def test_sequence_logps_equals_per_token_loop(tiny64, tokenizer):
    batch = collate(SEQS, tokenizer.pad_token_id)
    out = sequence_logps(tiny64, batch)
    expected = torch.tensor([loop_logps(tiny64, p, r) for p, r in SEQS], dtype=torch.float64)
    assert torch.allclose(out.sum, expected, atol=1e-10)
    assert out.n_tokens.tolist() == [len(r) for _, r in SEQS]
    assert torch.allclose(out.mean, expected / out.n_tokens)


def test_logits_to_keep_path_equals_full_forward(tiny64, tokenizer):
    class NoKeep(torch.nn.Module):  # a model without `logits_to_keep`: the full-logits fallback
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    batch = collate(SEQS, tokenizer.pad_token_id)
    assert torch.allclose(sequence_logps(tiny64, batch).sum, sequence_logps(NoKeep(tiny64), batch).sum, atol=1e-12)


def test_padding_does_not_change_log_probs(tiny64, tokenizer):
    alone = [sequence_logps(tiny64, collate([s], tokenizer.pad_token_id)).sum.item() for s in SEQS]
    together = sequence_logps(tiny64, collate(SEQS, tokenizer.pad_token_id)).sum.tolist()
    assert torch.allclose(torch.tensor(alone), torch.tensor(together), atol=1e-10)


def test_token_statistics_match_a_loop(tiny64, tokenizer):
    batch = collate(SEQS, tokenizer.pad_token_id)
    logits, labels = response_logits(tiny64, batch)
    stats = token_statistics(logits, labels)
    for i in range(len(SEQS)):
        want = dict.fromkeys(STAT_NAMES, 0.0)
        for t in range(labels.shape[1]):
            y = labels[i, t].item()
            if y == IGNORE:
                continue
            p = torch.softmax(logits[i, t], -1)
            e = torch.zeros_like(p)
            e[y] = 1
            want["logp"] += p[y].log().item()
            want["argmax_logp"] += p.max().log().item()
            want["except_argmax_logp"] += (1 - p.max()).log().item()
            want["sq_norm"] += (p @ p).item()
            want["pe"] += (p - e).norm().item()
            want["entropy"] += -(p * p.log()).sum().item()
            top = p.sort(descending=True).values[:TOP_K]
            want["topk_mass"] += top.sum().item()
            want["topk_entropy"] += -(top / top.sum() * (top / top.sum()).log()).sum().item()
        for key, value in want.items():
            assert abs(stats[key][i].item() - value) < 1e-10, key
    assert stats["n_tokens"].tolist() == [len(r) for _, r in SEQS]


def test_except_argmax_is_stable_when_the_model_is_certain():
    logits = torch.tensor([[[0.0, 60.0, 0.0]]])  # max π = 1 - 2e^-60: 1 - max π underflows in float32
    stats = token_statistics(logits, torch.tensor([[1]]))
    assert abs(stats["except_argmax_logp"].item() - (torch.log(torch.tensor(2.0)).item() - 60)) < 1e-4


def test_top_k_statistics_by_hand():
    """Uniform over 2k tokens: the top k hold half the mass and are uniform (entropy log k); a vocabulary smaller
    than k keeps all of it."""
    stats = token_statistics(torch.zeros(1, 1, 2 * TOP_K), torch.tensor([[0]]))
    assert stats["topk_mass"].item() == pytest.approx(0.5)
    assert stats["topk_entropy"].item() == pytest.approx(math.log(TOP_K))
    stats = token_statistics(torch.tensor([[[0.0, math.log(3.0)]]]), torch.tensor([[0]]))  # π = (1/4, 3/4)
    assert stats["topk_mass"].item() == pytest.approx(1.0)
    assert stats["topk_entropy"].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_a_norm_identity():
    """‖I - 1πᵀ‖_F² = V - 2 + V‖π‖² (paper Eq. 27-31), the formula the probes use for peakiness."""
    torch.manual_seed(0)
    for v in (2, 5, 50):
        p = torch.softmax(torch.randn(v, dtype=torch.float64) * 3, -1)
        a = torch.eye(v, dtype=torch.float64) - torch.ones(v, 1, dtype=torch.float64) @ p[None]
        assert abs((a**2).sum().item() - (v - 2 + v * (p @ p).item())) < 1e-10
