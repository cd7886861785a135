"""Every registered loss against values computed by hand (see the arithmetic in each comment)."""

import math

import pytest
import torch

from ldyn.config import LossConfig
from ldyn.errors import LdynError
from ldyn.losses import LOSSES, PairLogps, get_loss, register_loss


def logps(chosen, rejected, n_chosen=5, n_rejected=4):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return PairLogps(t(chosen), t(rejected), t(n_chosen), t(n_rejected))


# policy: log π(y⁺) = -10, log π(y⁻) = -12; reference: -11 and -11, so r⁺ = 1, r⁻ = -1 and h = r⁺ - r⁻ = 2.
POLICY, REFERENCE = logps(-10.0, -12.0), logps(-11.0, -11.0)

CASES = [
    # sft: -log π(y⁺) = 10
    ("sft", {}, POLICY, 10.0),
    # dpo: -log σ(βh) = log(1 + e^{-0.2}) with β = 0.1
    ("dpo", {}, POLICY, 0.5981388693815918),
    # ipo: (h - 1/(2β))² = (2 - 5)² = 9
    ("ipo", {}, POLICY, 9.0),
    # cdpo, ε = 0.1: 0.9·log(1 + e^{-0.2}) + 0.1·log(1 + e^{0.2}) = 0.9·0.598139 + 0.1·0.798139
    ("cdpo", {"label_smoothing": 0.1}, POLICY, 0.6181388693815918),
    # slic, δ = 1: max(0, 1 + 10 - 12) = 0, plus λ·10 = 1
    ("slic", {"slic_delta": 1.0}, POLICY, 1.0),
    # slic, δ = 3: max(0, 3 + 10 - 12) = 1, plus 1
    ("slic", {"slic_delta": 3.0}, POLICY, 2.0),
    # sppo: (r⁺ - 5)² + (r⁻ + 5)² = 16 + 16
    ("sppo", {}, POLICY, 32.0),
    # rpo, α = 1: dpo + 10 / 5 tokens
    ("rpo", {}, POLICY, 2.5981388693815918),
    # dpop: y⁺ is above its reference, no penalty: same as dpo
    ("dpop", {}, POLICY, 0.5981388693815918),
    # dpop, policy (-12, -12): h = -1 - (-1) = 0, penalty = -11 - (-12) = 1: log(1 + e^{0.1·50})
    ("dpop", {}, logps(-12.0, -12.0), 5.006715348489118),
    # simpo, β = 2, γ = 0.5: 2·(-10/5) - 2·(-12/4) - 0.5 = 1.5 -> log(1 + e^{-1.5})
    ("simpo", {"beta": 2.0, "simpo_gamma": 0.5}, POLICY, 0.2014132779827524),
]


@pytest.mark.parametrize("name,overrides,policy,expected", CASES)
def test_loss_matches_hand_computed_value(name, overrides, policy, expected):
    spec = get_loss(name)
    out = spec.fn(policy, REFERENCE if spec.needs_reference else None, LossConfig(name=name, **overrides))
    assert out.losses.shape == (1,)
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)


def test_every_registered_loss_is_tested():
    # a sampled loss (grpo) is no function of pairs' log-probs: test_grpo.py checks its update by hand
    assert {c[0] for c in CASES} == {name for name, spec in LOSSES.items() if not spec.sampled}
    with pytest.raises(LdynError, match="sampled completions"):
        get_loss("grpo").fn(POLICY, None, LossConfig(name="grpo"))


def test_dpo_at_zero_margin_is_log_2():
    out = get_loss("dpo").fn(POLICY, POLICY, LossConfig())
    assert out.losses.item() == pytest.approx(math.log(2))
    assert out.metrics["rewards/margin"].item() == 0


def test_dpo_rewards_are_beta_times_log_ratios():
    m = get_loss("dpo").fn(POLICY, REFERENCE, LossConfig(beta=0.5)).metrics
    assert m["rewards/chosen"].item() == pytest.approx(0.5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)
    assert m["rewards/accuracy"].item() == 1.0


def test_ipo_is_minimised_at_margin_one_over_two_beta():
    beta = 0.25
    h = torch.linspace(0, 4, 401, dtype=torch.float64, requires_grad=True)
    ones = torch.ones_like(h)
    policy = PairLogps(h, torch.zeros_like(h), ones, ones)
    zero = PairLogps(torch.zeros_like(h), torch.zeros_like(h), ones, ones)
    losses = get_loss("ipo").fn(policy, zero, LossConfig(beta=beta)).losses
    assert h[losses.argmin()].item() == pytest.approx(1 / (2 * beta))


def test_unknown_loss_names_nearest():
    with pytest.raises(LdynError, match="did you mean 'dpo'"):
        get_loss("dpoo")


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError):
        register_loss("dpo", needs_reference=True, needs_rejected=True)(lambda p, r, c: None)
