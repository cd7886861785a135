"""The RL rules of `ldyn diagnose`, for a stage that trains on its own rollouts (`loss.name=grpo`).

Both read the model's own step-0 rollouts, probed every round (`rollout_correct`, `rollout_incorrect`:
`train/rollout_probes.py`, or an RL trainer's through the callback), and compare the stage's last round with its
first, as the other rules do; with the types absent they say nothing. Thresholds (`findings.py`, plus one here):

- `lazy_likelihood_displacement` (Deng et al., arXiv 2505.18830): the update visibly acted on the negative side --
  the incorrect rollouts fell by at least MIN_NATS in the mean -- while at least MIN_SHARE of the prompts' correct
  rollouts rose by less than MIN_NATS or fell. Its share is that of the lazy prompts.
- `entropy_collapse` (Cui et al., arXiv 2505.22617): the per-token entropy of the policy along its step-0 rollouts
  (both types, per prompt their mean) ends at most COLLAPSE (half) of where it started, in the mean and for at
  least MIN_SHARE of the prompts: half the entropy is e^{L/2}-fold fewer typical continuations of an L-token
  response, past the gentle sharpening `peakiness` reports.
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


def _finding(view: StageView, key: str, text: str, share: float, values: dict) -> Finding:
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
    per_type = [view.ends(t, "entropy") for t in ROLLOUT_TYPES]
    ids = sorted(set().union(*per_type))
    if not ids:
        return None
    ends = {e: np.mean([d[e] for d in per_type if e in d], axis=0) for e in ids}  # (first, last) per prompt
    first, last = np.mean([v[0] for v in ends.values()]), np.mean([v[1] for v in ends.values()])
    halved = [b <= COLLAPSE * a for a, b in ends.values()]
    if not (first > 0 and last <= COLLAPSE * first and np.mean(halved) >= MIN_SHARE):
        return None
    text = (
        f"the per-token entropy along its step-0 rollouts fell {first:.2f} → {last:.2f} nat "
        f"({100 * (1 - last / first):.0f}% down); at most half of its start on {of_prompts(halved)}"
    )
    values = {"entropy_start": float(first), "entropy_end": float(last)}
    return _finding(view, "entropy_collapse", text, float(np.mean(halved)), values)


RL_RULES = (lazy_likelihood_displacement, entropy_collapse)
