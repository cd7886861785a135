"""The RL rules of `ldyn diagnose`, for a stage that trains on its own rollouts (`loss.name=grpo`).

Both read the model's own step-0 rollouts, probed every round (`rollout_correct`, `rollout_incorrect`:
`train/rollout_probes.py`, or an RL trainer's through the callback), and compare the stage's last round with its
first, as the other rules do; with the types absent they say nothing. Thresholds (`findings.py`, plus one here):

- `lazy_likelihood_displacement` (Deng et al., arXiv 2505.18830): the update visibly acted on the negative side --
  the incorrect rollouts fell by at least MIN_NATS in the mean -- while at least MIN_SHARE of the prompts' correct
  rollouts rose by less than MIN_NATS or fell. Its share is that of the lazy prompts.
- `entropy_collapse` (Cui et al., arXiv 2505.22617): the policy's entropy on its own completions (the stage's
  `entropy` metric, per update: what Cui et al. track) is, over the last quarter of the stage's updates, at most
  COLLAPSE (half) of its mean over the first quarter: half the entropy is e^{L/2}-fold fewer typical completions
  of L tokens, past the gentle sharpening `peakiness` reports along fixed responses. The text adds the mean
  Cov(log π, A) (`cov_logp_advantage`), whose sign says which way the entropy is driven, and the entropy along
  the step-0 rollouts, which the policy no longer samples. It has no share of prompts: the metric is the batch's.
"""

from __future__ import annotations

import numpy as np

from ldyn.data.probesets import ROLLOUT_TYPES
from ldyn.runs.findings import MIN_NATS, MIN_SHARE, Finding, StageView, mean, of_prompts

COLLAPSE = 0.5

TITLES = {"lazy_likelihood_displacement": "lazy likelihood displacement", "entropy_collapse": "entropy collapse"}
MECHANISMS = {
    "lazy_likelihood_displacement": "The negative gradient on incorrect rollouts that share tokens and hidden "
    "states with the correct ones also lowers the correct ones, through the shared eNTK; where it outweighs their "
    "own positive gradient their likelihood barely rises or falls, although they were rewarded.",
    "entropy_collapse": "A policy-gradient step changes the entropy by about −η·Cov(log π, A): when the likely "
    "tokens are the rewarded ones the covariance is positive and every update sharpens the policy, until it "
    "stops exploring (the cov_logp_advantage metric tracks the covariance per update).",
}
LEVERS = {
    "lazy_likelihood_displacement": [
        "down-weight the negative gradient on the incorrect rollouts' tokens most similar to the correct ones "
        "(NTHR, Deng et al. 2025)",
        "weight the positive-advantage rollouts more, or add an SFT term on the correct rollouts",
        "a smaller learning rate: the displacement compounds with every update",
    ],
    "entropy_collapse": [
        "clip or KL-penalise the updates of the highest-covariance tokens (Clip-Cov, KL-Cov: Cui et al. 2025)",
        "clip-higher: rl.epsilon_high above rl.epsilon lets unlikely tokens rise (DAPO)",
        "a higher rl.temperature, or a KL to the reference (rl.beta)",
    ],
}


def _finding(view: StageView, key: str, text: str, share: float | None, values: dict) -> Finding:
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
    return Finding(key, view.name, TITLES[key], f"{view.label}: {text}", share, MECHANISMS[key], LEVERS[key], rounded)


def lazy_likelihood_displacement(view: StageView) -> Finding | None:
    if not view.sampled:
        return None
    correct, incorrect = view.change("rollout_correct"), view.change("rollout_incorrect")
    if not correct or not incorrect or mean(incorrect) > -MIN_NATS:
        return None
    lazy = [v < MIN_NATS for v in correct.values()]
    if np.mean(lazy) < MIN_SHARE:
        return None
    fell = [v < 0 for v in correct.values()]
    text = (
        f"its correct step-0 rollouts moved {mean(correct):+.2f} nats (less than +{MIN_NATS} on {of_prompts(lazy)}, "
        f"down on {sum(fell)}) while its incorrect ones fell {-mean(incorrect):.2f}"
    )
    values = {"correct": mean(correct), "incorrect": mean(incorrect), "fell": float(np.mean(fell))}
    return _finding(view, "lazy_likelihood_displacement", text, float(np.mean(lazy)), values)


def entropy_collapse(view: StageView) -> Finding | None:
    if not view.sampled:
        return None
    rows = [m for m in view.metrics if m.get("entropy") is not None]
    quarter = len(rows) // 4
    if quarter < 1:
        return None
    first = float(np.mean([m["entropy"] for m in rows[:quarter]]))
    last = float(np.mean([m["entropy"] for m in rows[-quarter:]]))
    if not (first > 0 and last <= COLLAPSE * first):
        return None
    text = (
        f"the entropy of its own completions fell {first:.2f} → {last:.2f} nat/token (the first against the last "
        f"{quarter} of {len(rows)} updates, {100 * (1 - last / first):.0f}% down)"
    )
    values = {"entropy_start": first, "entropy_end": last}
    cov = [m["cov_logp_advantage"] for m in rows if m.get("cov_logp_advantage") is not None]
    if cov:
        values["cov_mean"] = float(np.mean(cov))
        text += f"; Cov(log π, A) averaged {values['cov_mean']:+.3f}"
    ends = [e for t in ROLLOUT_TYPES for e in view.ends(t, "entropy").values()]
    if ends:
        values["rollouts_start"], values["rollouts_end"] = (float(v) for v in np.mean(ends, axis=0))
        text += f"; along its step-0 rollouts {values['rollouts_start']:.2f} → {values['rollouts_end']:.2f}"
    return _finding(view, "entropy_collapse", text, None, values)


RL_RULES = (lazy_likelihood_displacement, entropy_collapse)
