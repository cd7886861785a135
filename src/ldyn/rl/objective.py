"""The GRPO family: group-relative advantages and the PPO-clipped token objective, as pure functions of tensors.

Matched against TRL 1.16.0 (`trl/trainer/grpo_trainer.py`, `rloo_trainer.py`, `grpo_config.py`, `utils.nanstd`),
with TRL's names for every setting. A GRPO step samples G = `num_generations` completions o_1..o_G of each of P
prompts (N = P·G completions, prompt-major: completion i belongs to prompt i // G), scores them with a reward,
turns the rewards into advantages within each prompt's group (`group_advantages`), and minimises the per-token
objective of `rl_token_loss`. Notation: ρ_it = π(o_it | x, o_i<t) / π_old(o_it | ...) = exp(logp - old_logp),
π_old the policy that sampled (= π when each sampled batch is used for one update, TRL's num_iterations = 1),
|o_i| the completion's tokens, A_i its advantage.

Two settings choose a method, kept apart as TRL keeps them:
- `advantage` -- how rewards become advantages: "grpo" (z-score within the group, `scale_rewards` choosing the std),
  "dr_grpo" (centred only) or "rloo" (leave-one-out baseline).
- `loss_type` -- how the per-token objective is aggregated into one loss: a registered name (`RL_LOSSES`: "grpo",
  "bnpo", "dapo", "dr_grpo"); add one with `@register_rl_loss(name)` on its token-weight function.
So DeepSeekMath's GRPO is (advantage="grpo", loss_type="grpo"), Dr. GRPO (Liu et al. 2025) is (advantage="dr_grpo",
loss_type="dr_grpo"), DAPO's token-level loss (Yu et al. 2025) is loss_type="dapo" with epsilon_high=0.28, and
RLOO's advantages (Ahmadian et al. 2024) can be combined with any aggregation.

The settings are `RLConfig` (defined in `losses.py`, beneath the config, whose stages hold one as `rl`); the
functions here read only its attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from ldyn.errors import LdynError, did_you_mean
from ldyn.losses import LossOutput, RLConfig  # RLConfig is a stage's `rl` settings, so it lives below config

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
SCALE_REWARDS = ("group", "batch", "none")


# ---------------------------------------------------------------- advantages


def group_advantages(
    rewards: torch.Tensor, kind: str = "grpo", scale_rewards: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Advantages (P, G) of the rewards (P, G) of G completions of each of P prompts.

    - "grpo": A_i = (r_i - mean_group r) / (std + eps), std by `scale_rewards`: "group" (of the prompt's G rewards),
      "batch" (of all P·G rewards; the mean stays the group's) or "none" (no division: A_i = r_i - mean_group r).
      Shao et al. 2024, "DeepSeekMath", §4.1.2; TRL's GRPOTrainer (`scale_rewards`, eps = 1e-4).
    - "dr_grpo": A_i = r_i - mean_group r, whatever `scale_rewards` says (Liu et al. 2025, "Understanding R1-Zero-Like
      Training", Eq. 3; in TRL, scale_rewards="none").
    - "rloo": A_i = r_i - mean_{j≠i} r_j = G/(G-1) · (r_i - mean_group r), no std (Ahmadian et al. 2024, "Back to
      Basics", Eq. 7; TRL's RLOOTrainer with normalize_advantages=False). `scale_rewards` is not read.
    Every std is the unbiased one (Bessel's correction, divisor n - 1), as TRL's `nanstd`. A group whose rewards
    are all equal gets advantages 0 under every kind.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (prompts, generations), got shape {tuple(rewards.shape)}")
    if kind not in ADVANTAGES:
        raise LdynError(f"unknown advantage '{kind}'{did_you_mean(kind, ADVANTAGES)}", field="advantage")
    if scale_rewards not in SCALE_REWARDS:
        hint = did_you_mean(scale_rewards, SCALE_REWARDS)
        raise LdynError(f"unknown scale_rewards '{scale_rewards}'{hint}", field="scale_rewards")
    g = rewards.shape[1]
    if g < 2:
        raise LdynError(f"advantages need at least 2 completions per prompt, got {g}", field="num_generations")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if kind == "rloo":
        return centred * (g / (g - 1))  # r_i - (Σ_j r_j - r_i)/(G-1), exactly
    if kind == "dr_grpo" or scale_rewards == "none":
        return centred
    std = rewards.std(dim=1, keepdim=True) if scale_rewards == "group" else rewards.std()
    return centred / (std + eps)


# ---------------------------------------------------------------- aggregation (loss_type)


@dataclass(frozen=True)
class RLLossSpec:
    name: str
    weights: Callable[[torch.Tensor, RLConfig, float | None], torch.Tensor]  # (mask, cfg, num_items) -> (N, T)
    params: tuple[str, ...] = ()  # the RLConfig fields it reads

    @property
    def summary(self) -> str:
        return (self.weights.__doc__ or "").strip().splitlines()[0]


RL_LOSSES: dict[str, RLLossSpec] = {}


def register_rl_loss(name: str, *, params: tuple[str, ...] = ()):
    """Register a `loss_type`: `fn(mask, cfg, num_items) -> w`, the weight w_it (N, T) of each token's objective in
    the loss L = Σ_it w_it ℓ_it (zero where mask is 0); `params` names the RLConfig fields it reads."""
    unknown = set(params) - {f.name for f in fields(RLConfig)}
    if unknown:
        raise ValueError(f"rl loss '{name}': {sorted(unknown)} are not RLConfig fields; declare them there")

    def decorator(fn):
        if name in RL_LOSSES:
            raise ValueError(f"rl loss '{name}' is already registered")
        RL_LOSSES[name] = RLLossSpec(name, fn, tuple(params))
        return fn

    return decorator


def get_rl_loss(name: str) -> RLLossSpec:
    if name not in RL_LOSSES:
        raise LdynError(f"unknown loss_type '{name}'{did_you_mean(name, RL_LOSSES)}", field="loss_type")
    return RL_LOSSES[name]


@register_rl_loss("grpo")
def grpo_weights(mask: torch.Tensor, cfg: RLConfig, num_items: float | None = None) -> torch.Tensor:
    """Each completion's token mean, then the mean over completions: w_it = m_it / (N · |o_i|) (DeepSeekMath Eq. 3)."""
    return mask / (mask.shape[0] * mask.sum(-1, keepdim=True).clamp(min=1.0))


@register_rl_loss("bnpo")
def bnpo_weights(mask: torch.Tensor, cfg: RLConfig, num_items: float | None = None) -> torch.Tensor:
    """The mean over the batch's tokens: w_it = m_it / Σ m (TRL's "bnpo", normalised over the local batch)."""
    return mask / mask.sum().clamp(min=1.0)


@register_rl_loss("dapo")
def dapo_weights(mask: torch.Tensor, cfg: RLConfig, num_items: float | None = None) -> torch.Tensor:
    """The mean over the accumulated batch's tokens: w_it = m_it / num_items (DAPO's token-level loss, Yu et al. 2025,
    Eq. 8); num_items defaults to this batch's tokens, which makes it "bnpo"."""
    if num_items is None:
        return mask / mask.sum().clamp(min=1.0)
    return mask / max(float(num_items), 1.0)


@register_rl_loss("dr_grpo", params=("max_completion_length",))
def dr_grpo_weights(mask: torch.Tensor, cfg: RLConfig, num_items: float | None = None) -> torch.Tensor:
    """A constant normaliser: w_it = m_it / (N · max_completion_length) (Dr. GRPO, Liu et al. 2025, Eq. 3)."""
    return mask / (mask.shape[0] * cfg.max_completion_length)


def token_weights(mask: torch.Tensor, cfg: RLConfig, num_items: float | None = None) -> torch.Tensor:
    """w_it (N, T) of `cfg.loss_type`: the aggregated loss is Σ_it w_it ℓ_it."""
    return get_rl_loss(cfg.loss_type).weights(mask, cfg, num_items)


# ---------------------------------------------------------------- the token objective


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π || π_ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 ≥ 0 (Schulman 2020, "Approximating
    KL divergence"; TRL's GRPO KL); its gradient wrt logp, 1 - exp(ref - logp), is zero at logp = ref."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def rl_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: RLConfig,
    *,
    num_items: float | None = None,
) -> LossOutput:
    """The PPO-clipped GRPO objective of N sampled completions, aggregated by `cfg.loss_type`.

    Per token: ℓ_it = -min(ρ_it A_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_i) + β k3_it, with ρ_it = exp(logp -
    old_logp) (Schulman et al. 2017, "PPO", Eq. 7; DeepSeekMath Eq. 3; TRL's token-level importance sampling), and
    L = Σ_it w_it ℓ_it with w the loss_type's token weights (`token_weights`).

    logp (N, T): log π(o_it | ...) of the completions' tokens under the current policy, with grad; old_logp: the
    sampling policy's (detached; None = logp.detach(), i.e. ρ = 1 and the gradient is the policy gradient);
    ref_logp: the reference's (needed when β ≠ 0); advantages (N,); mask (N, T): 1 on completion tokens; num_items:
    dapo's normaliser, the accumulated batch's completion tokens (TRL's num_items_in_batch; default: this batch's).

    `losses` (N,) are per-completion contributions scaled by N, `losses_i = N Σ_t w_it ℓ_it`, so that the training
    loss is `losses.mean()` = L exactly, as for every loss of `losses.py`. Metrics (N,), logged as means: the
    fraction of each completion's tokens clipped ("clip_ratio": the region where the min takes the clipped term,
    ρ > 1 + ε_high with A > 0 or ρ < 1 - ε_low with A < 0; "clip_ratio/high", "clip_ratio/low"), its mean k3
    ("kl", when a reference is given), its mean ρ ("ratio"), its advantage ("advantage_mean") and its length
    ("completion_length"). TRL logs token means over the batch; these are means of per-completion means.
    """
    if logp.dim() != 2 or mask.shape != logp.shape or advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"logp and mask must be (N, T) and advantages (N,), got {tuple(logp.shape)}, {tuple(mask.shape)} and "
            f"{tuple(advantages.shape)}"
        )
    if cfg.beta != 0 and ref_logp is None:
        raise ValueError("beta ≠ 0 needs the reference's log-probs")
    mask = mask.to(logp.dtype)
    old_logp = logp.detach() if old_logp is None else old_logp.detach()
    adv = advantages.detach().to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - cfg.epsilon_low, 1 + cfg.epsilon_up)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp.detach())
        if cfg.beta != 0:
            per_token = per_token + cfg.beta * kl
    w = token_weights(mask, cfg, num_items)
    losses = logp.shape[0] * (w * per_token).sum(-1)

    lengths = mask.sum(-1)

    def seq_mean(x: torch.Tensor) -> torch.Tensor:
        return ((x * mask).sum(-1) / lengths.clamp(min=1.0)).detach()

    high = ((ratio > 1 + cfg.epsilon_up) & (adv > 0)).to(logp.dtype)
    low = ((ratio < 1 - cfg.epsilon_low) & (adv < 0)).to(logp.dtype)
    metrics = {
        "clip_ratio": seq_mean(high + low),
        "clip_ratio/high": seq_mean(high),
        "clip_ratio/low": seq_mean(low),
        "ratio": seq_mean(ratio),
        "advantage_mean": adv.squeeze(1),
        "completion_length": lengths.detach(),
    }
    if kl is not None:
        metrics["kl"] = seq_mean(kl)
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------- what the update does to the policy's entropy


def logp_advantage_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cov(log π, A) over a batch's completion tokens: mean_t (log π_t − mean log π)(A_t − mean A), every token t of
    completion i taking A_i, both means over the tokens of `mask` (N, T). Cui et al. (arXiv 2505.22617) show that
    for a softmax policy one policy-gradient step changes the entropy by about −η·Cov_{a∼π}(log π(a), π(a)·A(a))
    (natural gradient: −η·Cov(log π, A)); this batch estimate is the covariance they track: positive when the
    likely tokens are the rewarded ones, which collapses the entropy."""
    w = mask.to(logp.dtype)
    n = w.sum().clamp(min=1)
    a = advantages.to(logp.dtype)[:, None].expand_as(logp)
    centred_logp = logp - (logp * w).sum() / n
    centred_a = a - (a * w).sum() / n
    return (centred_logp * centred_a * w).sum() / n


def check_rl_config(cfg: RLConfig) -> None:
    """Refuse settings no objective can use, naming the field."""
    get_rl_loss(cfg.loss_type)
    if cfg.advantage not in ADVANTAGES:
        raise LdynError(
            f"unknown advantage '{cfg.advantage}'{did_you_mean(cfg.advantage, ADVANTAGES)}", field="advantage"
        )
    if cfg.scale_rewards not in SCALE_REWARDS:
        hint = did_you_mean(cfg.scale_rewards, SCALE_REWARDS)
        raise LdynError(f"unknown scale_rewards '{cfg.scale_rewards}'{hint}", field="scale_rewards")
    if cfg.num_generations < 2:
        raise LdynError(
            f"must be at least 2 (advantages compare a prompt's completions), got {cfg.num_generations}",
            field="num_generations",
        )
    for name in ("epsilon", "epsilon_high", "beta", "temperature"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise LdynError(f"must be ≥ 0, got {value}", field=name)
    if cfg.max_completion_length < 1:
        raise LdynError(f"must be ≥ 1, got {cfg.max_completion_length}", field="max_completion_length")
