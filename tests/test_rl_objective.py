"""The GRPO family's advantages and token objective against values computed by hand (the arithmetic in comments)."""

import math

import pytest
import torch

from ldyn.errors import LdynError
from ldyn.rl.objective import (
    RL_LOSSES,
    RLConfig,
    check_rl_config,
    get_rl_loss,
    group_advantages,
    k3_kl,
    logp_advantage_covariance,
    register_rl_loss,
    rl_token_loss,
    token_weights,
)

f64 = dict(dtype=torch.float64)
# Two prompts, three completions each. Prompt 1: mean 1/3, unbiased var ((2/3)² + 2·(1/3)²)/2 = 1/3, std 1/√3.
# Prompt 2: mean 3, deviations (-1, -1, 2), unbiased var (1 + 1 + 4)/2 = 3, std √3.
# All six: mean 5/3, squared deviations (4 + 25 + 25 + 1 + 1 + 100)/9 = 52/3, unbiased var 52/15.
REWARDS = torch.tensor([[1.0, 0.0, 0.0], [2.0, 2.0, 5.0]], **f64)
CENTRED = [[2 / 3, -1 / 3, -1 / 3], [-1.0, -1.0, 2.0]]
S3, SB = math.sqrt(3), math.sqrt(52 / 15)
ADVANTAGE_CASES = [
    ("grpo", "group", [[2 / 3 * S3, -1 / 3 * S3, -1 / 3 * S3], [-1 / S3, -1 / S3, 2 / S3]]),  # centred / group std
    ("grpo", "batch", [[v / SB for v in row] for row in CENTRED]),  # group-centred / std of all six
    ("grpo", "none", CENTRED),
    ("dr_grpo", "group", CENTRED),  # never divided, whatever scale_rewards says
    # r_i - mean of the other two: 1 - 0, 0 - 1/2, 0 - 1/2; 2 - 7/2, 2 - 7/2, 5 - 2
    ("rloo", "group", [[1.0, -0.5, -0.5], [-1.5, -1.5, 3.0]]),
]


@pytest.mark.parametrize("kind,scale,expected", ADVANTAGE_CASES)
def test_advantages_match_hand_computed_values(kind, scale, expected):
    out = group_advantages(REWARDS, kind, scale, eps=0.0)
    torch.testing.assert_close(out, torch.tensor(expected, **f64), rtol=0, atol=1e-12)


def test_grpo_advantages_add_eps_to_the_std_as_trl_does():
    out = group_advantages(REWARDS, "grpo", "group")  # eps = 1e-4
    assert out[0, 0].item() == pytest.approx((2 / 3) / (1 / S3 + 1e-4), abs=1e-12)


def test_a_group_of_equal_rewards_has_zero_advantages():
    same = torch.tensor([[1.0, 1.0, 1.0]], **f64)
    for kind in ("grpo", "dr_grpo", "rloo"):
        assert group_advantages(same, kind).abs().max().item() == 0


def test_advantage_errors_name_the_setting():
    with pytest.raises(LdynError, match="did you mean 'rloo'"):
        group_advantages(REWARDS, "rlo")
    with pytest.raises(LdynError, match="did you mean 'group'"):
        group_advantages(REWARDS, "grpo", "groups")
    with pytest.raises(LdynError, match="at least 2"):
        group_advantages(REWARDS[:, :1], "grpo")


# ---------------------------------------------------------------- the token objective

# Two completions of 3 and 2 tokens (the third of the second is padding, with a wild value that must not count).
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], **f64)
ADV = torch.tensor([1.0, -2.0], **f64)
# log ρ per token: completion 1 (0, ln 1.1, 0), completion 2 (ln 0.9, 0, ln 5 on the padding). With ε = 0.2 every
# real ρ is inside [0.8, 1.2], so ℓ = -ρA: completion 1 (-1, -1.1, -1), sum -3.1; completion 2 (1.8, 2), sum 3.8.
LOG_RATIO = torch.tensor([[0.0, math.log(1.1), 0.0], [math.log(0.9), 0.0, math.log(5.0)]], **f64)
LOSS_TYPE_CASES = [
    # mean per completion (-3.1/3, 3.8/2) = (-1.033333, 1.9), then the mean over the two: 0.433333
    ("grpo", {}, [-3.1 / 3, 1.9], (-3.1 / 3 + 1.9) / 2),
    # (-3.1 + 3.8) / 5 tokens = 0.14; per completion 2·(-3.1/5), 2·(3.8/5)
    ("bnpo", {}, [-1.24, 1.52], 0.14),
    ("dapo", {}, [-1.24, 1.52], 0.14),  # this batch's tokens: the same as bnpo
    ("dapo", {"num_items": 10}, [-0.62, 0.76], 0.07),  # 0.7 / 10 accumulated tokens
    # 0.7 / (2 · 4): per completion -3.1/4, 3.8/4
    ("dr_grpo", {}, [-0.775, 0.95], 0.0875),
]


@pytest.mark.parametrize("loss_type,kwargs,losses,loss", LOSS_TYPE_CASES)
def test_token_loss_matches_hand_computed_values(loss_type, kwargs, losses, loss):
    logp = torch.full((2, 3), -1.0, **f64)
    cfg = RLConfig(loss_type=loss_type, max_completion_length=4)
    out = rl_token_loss(logp + LOG_RATIO, logp, None, ADV, MASK, cfg, **kwargs)
    torch.testing.assert_close(out.losses, torch.tensor(losses, **f64), rtol=0, atol=1e-12)
    assert out.losses.mean().item() == pytest.approx(loss, abs=1e-12)
    assert out.metrics["clip_ratio"].tolist() == [0.0, 0.0]
    assert out.metrics["completion_length"].tolist() == [3.0, 2.0]
    assert "kl" not in out.metrics


def test_every_registered_loss_type_is_tested():
    assert {c[0] for c in LOSS_TYPE_CASES} == set(RL_LOSSES)


def test_clipping_on_both_sides_of_the_band():
    # ε_low = 0.2, ε_high = 0.28: the band is [0.8, 1.28]. ρ per token: (1.5, 0.5) for A = +1, (0.5, 1.5) for A = -1.
    # A = +1: ρ = 1.5 is clipped to 1.28 (ℓ = -1.28, no gradient); ρ = 0.5 keeps -ρA = -0.5 (the min takes it).
    # A = -1: ρ = 0.5 is clipped to 0.8 (ℓ = 0.8, no gradient); ρ = 1.5 keeps 1.5.
    # grpo: (-1.28 - 0.5)/2 = -0.89 and (0.8 + 1.5)/2 = 1.15; loss (-0.89 + 1.15)/2 = 0.13.
    old = torch.zeros(2, 2, **f64)
    logp = torch.log(torch.tensor([[1.5, 0.5], [0.5, 1.5]], **f64)).requires_grad_()
    adv = torch.tensor([1.0, -1.0], **f64)
    cfg = RLConfig(loss_type="grpo", epsilon=0.2, epsilon_high=0.28)
    out = rl_token_loss(logp, old, None, adv, torch.ones(2, 2, **f64), cfg)
    torch.testing.assert_close(out.losses, torch.tensor([-0.89, 1.15], **f64), rtol=0, atol=1e-12)
    assert out.losses.mean().item() == pytest.approx(0.13, abs=1e-12)
    # d ℓ / d logp = -A ρ where unclipped, times w = 1/(2·2): (0, -0.5/4) and (0, 1.5/4)
    (grad,) = torch.autograd.grad(out.losses.mean(), logp)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.125], [0.0, 0.375]], **f64), rtol=0, atol=1e-12)
    assert out.metrics["clip_ratio/high"].tolist() == [0.5, 0.0]
    assert out.metrics["clip_ratio/low"].tolist() == [0.0, 0.5]
    assert out.metrics["clip_ratio"].tolist() == [0.5, 0.5]


def test_epsilon_high_defaults_to_epsilon():
    assert RLConfig(epsilon=0.3).epsilon_up == 0.3
    assert RLConfig(epsilon=0.3, epsilon_high=0.28).epsilon_up == 0.28


def test_kl_term_value_and_its_zero_gradient_at_the_reference():
    # k3 at ref - logp = ln 2: 2 - ln 2 - 1 = 0.306853; at 0: 0. A = 0, so only β·KL counts:
    # grpo: 0.1 · (0.306853 + 0)/2 = 0.0153426
    logp = torch.tensor([[-1.0, -2.0]], **f64, requires_grad=True)
    ref = torch.tensor([[-1.0 + math.log(2), -2.0]], **f64)
    cfg = RLConfig(loss_type="grpo", beta=0.1)
    out = rl_token_loss(logp, None, ref, torch.zeros(1, **f64), torch.ones(1, 2, **f64), cfg)
    assert out.metrics["kl"].item() == pytest.approx((1 - math.log(2)) / 2, abs=1e-12)
    assert out.losses.item() == pytest.approx(0.1 * (1 - math.log(2)) / 2, abs=1e-12)
    # d/dlogp β k3 = β (1 - e^{ref - logp}) w: 0.1 · (1 - 2) · 1/2 = -0.05 at the first token, 0 at the second
    (grad,) = torch.autograd.grad(out.losses.mean(), logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.05, 0.0]], **f64), rtol=0, atol=1e-12)
    at_ref = logp.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(k3_kl(at_ref, logp.detach()).sum(), at_ref)
    assert grad.abs().max().item() == 0


@pytest.mark.parametrize("loss_type", sorted(RL_LOSSES))
def test_gradient_at_ratio_one_is_minus_advantage_times_weight(loss_type):
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=gen, **f64) * 3).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], **f64)
    adv = torch.randn(3, generator=gen, **f64)
    cfg = RLConfig(loss_type=loss_type, max_completion_length=5)
    out = rl_token_loss(logp, logp.detach(), None, adv, mask, cfg)  # ρ = 1 everywhere
    (grad,) = torch.autograd.grad(out.losses.mean(), logp)
    expected = -adv[:, None] * token_weights(mask, cfg)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-14)
    assert grad[mask == 0].abs().max().item() == 0


def test_rl_loss_registry_errors():
    with pytest.raises(LdynError, match="did you mean 'dapo'"):
        get_rl_loss("dappo")
    with pytest.raises(ValueError):
        register_rl_loss("grpo")(lambda m, c, n: m)
    with pytest.raises(ValueError, match="not RLConfig fields"):
        register_rl_loss("new", params=("gamma",))
    assert get_rl_loss("grpo").summary.startswith("Each completion's token mean")


def test_check_rl_config_names_the_field():
    check_rl_config(RLConfig())
    with pytest.raises(LdynError) as e:
        check_rl_config(RLConfig(num_generations=1))
    assert e.value.field == "num_generations"
    with pytest.raises(LdynError) as e:
        check_rl_config(RLConfig(loss_type="grpoo"))
    assert e.value.field == "loss_type"


def test_logp_advantage_covariance_by_hand():
    # tokens (log π, A): (-1, 1), (-2, 1) of completion 0 and (-3, -2) of completion 1 (its second token padding):
    # means -2 and 0, so Cov = ((1)(1) + (0)(1) + (-1)(-2)) / 3 = 1: the likely tokens are the rewarded ones
    logp = torch.tensor([[-1.0, -2.0], [-3.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert logp_advantage_covariance(logp, torch.tensor([1.0, -2.0]), mask).item() == pytest.approx(1.0)
    assert logp_advantage_covariance(logp, torch.tensor([-1.0, 2.0]), mask).item() == pytest.approx(-1.0)
    assert logp_advantage_covariance(logp, torch.tensor([3.0, 3.0]), mask).item() == pytest.approx(0.0)
