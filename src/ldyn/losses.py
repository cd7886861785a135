"""Losses: pure functions of per-sequence log-probs, in one registry.

Every loss has the signature `(policy, reference, cfg) -> LossOutput`, where `policy` and `reference` are
`PairLogps` of shape (B,) each and `cfg` is a `LossConfig`. Because a loss only sees log-probs, its gradient with
respect to the logits -- the G term of the paper's Δ log π = -η A K G -- follows from the same function by autograd;
there is no second, hand-derived copy anywhere.

Notation: π = policy, π_ref = frozen reference, y⁺/y⁻ = chosen/rejected, log π(y) summed over response tokens,
r^± = log π(y^±) - log π_ref(y^±) (the implicit reward without β), h = r⁺ - r⁻, σ = logistic function.
Add a loss with `@register_loss("name", needs_reference=..., needs_rejected=..., params=(...))`; `ldyn ls losses`
lists them. A loss's hyperparameters are fields of `LossConfig` below, named in its `params`: adding a loss with a
parameter touches this file only.

A `sampled` loss is not a function of the rows' log-probs: `grpo` trains on completions it samples at each update,
scored by a reward, with the token objective of `rl/objective.py` (the trainer's `objective`, `train/grpo.py`). Its
settings, TRL's GRPOConfig names for the sampling, the reward and the objective, are a stage's `rl` (`RLConfig`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F

from ldyn.errors import LdynError, did_you_mean


@dataclass
class LossConfig:
    name: str = "dpo"  # a registered loss: `ldyn ls losses`
    beta: float = 0.1  # β: inverse temperature of DPO-family losses (SimPO wants ~2)
    label_smoothing: float = 0.0  # ε of cdpo: assumed probability that a preference label is flipped
    slic_delta: float = 1.0  # δ of slic: hinge margin on log π(y⁺) - log π(y⁻)
    slic_lambda: float = 0.1  # λ of slic: weight of the NLL regulariser on y⁺
    rpo_alpha: float = 1.0  # α of rpo: weight of the per-token NLL on y⁺ added to DPO
    dpop_lambda: float = 50.0  # λ of dpop: penalty on y⁺ falling below its reference log-prob
    simpo_gamma: float = 0.5  # γ of simpo: target reward margin


@dataclass
class RLConfig:
    num_generations: int = 8  # G: completions sampled per prompt (a group); advantages need G ≥ 2
    beta: float = 0.0  # β: weight of the per-token KL (k3) to the reference; 0 = no reference model (TRL's default)
    epsilon: float = 0.2  # ε_low: ρ is clipped below at 1 - ε
    epsilon_high: float | None = None  # ε_high: ρ is clipped above at 1 + ε_high (None = epsilon; DAPO uses 0.28)
    # how the per-token objective is aggregated (`RL_LOSSES`): grpo (each completion's token mean, then the mean
    # over completions) | bnpo (sum over the batch's tokens / their number) | dapo (the same over the accumulated
    # batch's tokens, TRL's default) | dr_grpo (sum / (N · max_completion_length))
    loss_type: str = "dapo"
    # the std that "grpo" advantages divide by: group (each prompt's G rewards) | batch (all N rewards) | none
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # how rewards become advantages (`group_advantages`): grpo (z-score within the group) | dr_grpo (centred only,
    # Dr. GRPO with loss_type=dr_grpo) | rloo (leave-one-out baseline, RLOO)
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    temperature: float = 1.0  # sampling temperature of the completions
    max_completion_length: int = 64  # longest completion (tokens); dr_grpo's constant normaliser
    top_k: int = 0  # sample from the k most likely tokens only (0 = the whole vocabulary)
    # a completion's reward: a built-in of rl/tasks.py (exact_number, final_number, number_only) or a user's
    # "package.module:function" with TRL's signature fn(prompts, completions, **row_fields) -> list[float]
    reward: str = "final_number"

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def epsilon_up(self) -> float:
        """ε_high as used: `epsilon_high`, or `epsilon` when it is None (as TRL)."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


@dataclass
class PairLogps:
    chosen: torch.Tensor  # (B,) log π(y⁺ | x)
    rejected: torch.Tensor | None  # (B,) log π(y⁻ | x); None for SFT batches
    chosen_tokens: torch.Tensor  # (B,) |y⁺|
    rejected_tokens: torch.Tensor | None  # (B,) |y⁻|

    @classmethod
    def from_rows(cls, sums: torch.Tensor, tokens: torch.Tensor, n: int) -> PairLogps:
        """Per-sequence log-probs of a `collate_pairs` batch: rows [0, n) chosen, rows [n, 2n) rejected if any."""
        pairs = sums.shape[0] > n
        return cls(sums[:n], sums[n:] if pairs else None, tokens[:n], tokens[n:] if pairs else None)


@dataclass
class LossOutput:
    losses: torch.Tensor  # (B,) per-example loss; the training loss is its mean
    metrics: dict[str, torch.Tensor]  # name -> (B,) values, logged as means (e.g. "rewards/margin")


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[[PairLogps, PairLogps | None, LossConfig], LossOutput]
    needs_reference: bool
    needs_rejected: bool
    params: tuple[str, ...] = ()  # the LossConfig fields it reads besides `name`
    sampled: bool = False  # trained on completions sampled at each update (the stage's `rl`); `fn` is never called

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]


LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str, *, needs_reference: bool, needs_rejected: bool, params: tuple[str, ...] = (), sampled: bool = False
):
    """Register `fn(policy, reference, cfg) -> LossOutput` under `name`; `params` names the LossConfig fields it
    reads (β, margins, weights), so that settings can be checked per loss; `sampled`: see the module docstring."""
    unknown = set(params) - {f.name for f in fields(LossConfig)} - {"name"}
    if unknown:
        raise ValueError(f"loss '{name}': {sorted(unknown)} are not LossConfig fields; declare them there")

    def decorator(fn):
        if name in LOSSES:
            raise ValueError(f"loss '{name}' is already registered")
        LOSSES[name] = LossSpec(name, fn, needs_reference, needs_rejected, tuple(params), sampled)
        return fn

    return decorator


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise LdynError(f"unknown loss '{name}'{did_you_mean(name, LOSSES)}")
    return LOSSES[name]


def _rewards(policy: PairLogps, reference: PairLogps, beta: float) -> dict[str, torch.Tensor]:
    """DPO's implicit rewards β r^± (detached) and their margin and accuracy, for logging."""
    chosen = beta * (policy.chosen - reference.chosen).detach()
    rejected = beta * (policy.rejected - reference.rejected).detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margin": chosen - rejected,
        "rewards/accuracy": (chosen > rejected).float(),
    }


def _log_ratio_margin(policy: PairLogps, reference: PairLogps) -> torch.Tensor:
    """h = [log π(y⁺) - log π_ref(y⁺)] - [log π(y⁻) - log π_ref(y⁻)], shape (B,)."""
    return (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)


@register_loss("sft", needs_reference=False, needs_rejected=False)
def sft(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """Supervised finetuning: L = -log π(y⁺ | x) = -Σ_l log π(y⁺_l | x, y⁺_<l).

    Ren & Sutherland 2025, Eq. 4 (summed over tokens, as the paper's code does).
    """
    return LossOutput(-policy.chosen, {})


@register_loss("dpo", needs_reference=True, needs_rejected=True, params=("beta",))
def dpo(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """Direct preference optimisation: L = -log σ(β h).

    Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7; Ren & Sutherland 2025, Eq. 12.
    """
    h = _log_ratio_margin(policy, reference)
    return LossOutput(-F.logsigmoid(cfg.beta * h), _rewards(policy, reference, cfg.beta))


@register_loss("ipo", needs_reference=True, needs_rejected=True, params=("beta",))
def ipo(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """Identity preference optimisation: L = (h - 1/(2β))², on summed log-probs.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", Eq. 17;
    Ren & Sutherland 2025, Eq. 16. (TRL divides the log-probs by length; the paper's equation does not.)
    """
    h = _log_ratio_margin(policy, reference)
    return LossOutput((h - 1 / (2 * cfg.beta)) ** 2, _rewards(policy, reference, cfg.beta))


@register_loss("cdpo", needs_reference=True, needs_rejected=True, params=("beta", "label_smoothing"))
def cdpo(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """Conservative DPO (label smoothing ε): L = -(1 - ε) log σ(β h) - ε log σ(-β h).

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO".
    """
    h = _log_ratio_margin(policy, reference)
    eps = cfg.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(cfg.beta * h) - eps * F.logsigmoid(-cfg.beta * h)
    return LossOutput(losses, _rewards(policy, reference, cfg.beta))


@register_loss("slic", needs_reference=False, needs_rejected=True, params=("slic_delta", "slic_lambda"))
def slic(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """SLiC-HF: L = max(0, δ - log π(y⁺) + log π(y⁻)) - λ log π(y⁺).

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", Eq. 1 (rank calibration with
    the SFT regulariser on y⁺); Ren & Sutherland 2025, Eq. 18-19.
    """
    hinge = (cfg.slic_delta - policy.chosen + policy.rejected).clamp(min=0)
    return LossOutput(hinge - cfg.slic_lambda * policy.chosen, {"slic/hinge_active": (hinge > 0).float()})


@register_loss("sppo", needs_reference=True, needs_rejected=True, params=("beta",))
def sppo(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """SPPO with hard labels: L = (r⁺ - 1/(2β))² + (r⁻ + 1/(2β))².

    Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment", Eq. 4.8 with the winner's
    probability set to 1 (TRL's "sppo_hard"); Ren & Sutherland 2025, Eq. 21 with η = 1/β.
    """
    r_chosen, r_rejected = policy.chosen - reference.chosen, policy.rejected - reference.rejected
    half = 1 / (2 * cfg.beta)
    return LossOutput((r_chosen - half) ** 2 + (r_rejected + half) ** 2, _rewards(policy, reference, cfg.beta))


@register_loss("rpo", needs_reference=True, needs_rejected=True, params=("beta", "rpo_alpha"))
def rpo(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """DPO plus per-token NLL on the chosen response: L = -log σ(β h) - α log π(y⁺) / |y⁺|.

    Pang et al. 2024, "Iterative Reasoning Preference Optimization", Eq. 1.
    """
    h = _log_ratio_margin(policy, reference)
    nll = -policy.chosen / policy.chosen_tokens.clamp(min=1)
    metrics = _rewards(policy, reference, cfg.beta) | {"rpo/nll": nll.detach()}
    return LossOutput(-F.logsigmoid(cfg.beta * h) + cfg.rpo_alpha * nll, metrics)


@register_loss("dpop", needs_reference=True, needs_rejected=True, params=("beta", "dpop_lambda"))
def dpop(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """DPO-Positive: L = -log σ(β [h - λ max(0, log π_ref(y⁺) - log π(y⁺))]).

    Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive", Eq. 3.
    """
    penalty = (reference.chosen - policy.chosen).clamp(min=0)
    h = _log_ratio_margin(policy, reference)
    metrics = _rewards(policy, reference, cfg.beta) | {"dpop/penalty": penalty.detach()}
    return LossOutput(-F.logsigmoid(cfg.beta * (h - cfg.dpop_lambda * penalty)), metrics)


@register_loss("simpo", needs_reference=False, needs_rejected=True, params=("beta", "simpo_gamma"))
def simpo(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """SimPO (reference-free, length-normalised): L = -log σ(β log π(y⁺)/|y⁺| - β log π(y⁻)/|y⁻| - γ).

    Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6.
    """
    chosen = cfg.beta * policy.chosen / policy.chosen_tokens.clamp(min=1)
    rejected = cfg.beta * policy.rejected / policy.rejected_tokens.clamp(min=1)
    metrics = {
        "rewards/chosen": chosen.detach(),
        "rewards/rejected": rejected.detach(),
        "rewards/margin": (chosen - rejected).detach(),
        "rewards/accuracy": (chosen > rejected).float(),
    }
    return LossOutput(-F.logsigmoid(chosen - rejected - cfg.simpo_gamma), metrics)


@register_loss("grpo", needs_reference=False, needs_rejected=False, sampled=True)
def grpo(policy: PairLogps, reference: PairLogps | None, cfg: LossConfig) -> LossOutput:
    """GRPO family: G completions sampled per prompt, scored by a reward, pushed along group-relative advantages.

    Shao et al. 2024, "DeepSeekMath", §4.1.2, as TRL 1.16's GRPOTrainer with num_iterations = 1 (ρ = 1): the
    token objective `rl.objective.rl_token_loss` of the stage's `rl` settings (RLConfig), whose `advantage` and
    `loss_type` also give Dr. GRPO (both dr_grpo), DAPO's token-level loss (dapo) and RLOO (advantage=rloo).
    The trainer computes it from the completions' token log-probs (`train/grpo.py`), never from this function.
    """
    raise LdynError("a grpo loss is computed from sampled completions' token log-probs (train/grpo.py), not from pairs")
