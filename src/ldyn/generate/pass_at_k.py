"""pass@k of a local model on a task with a verifiable reward: n samples per prompt, the unbiased estimator.

pass@k = mean over prompts of 1 - C(n - c, k) / C(n, k), where c of a prompt's n samples pass (their reward ≥
`threshold`): the probability that at least one of k samples drawn without replacement from the n passes (Chen et
al. 2021, "Evaluating Large Language Models Trained on Code", Eq. 1). The rows are a task's (`rl/tasks.py`), their
prompts rendered by `data.template` as training renders them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ldyn.data.templates import render_prompt
from ldyn.generate.sampling import generate
from ldyn.rl.tasks import RewardFn, score


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k): the chance that k of n samples (c of which pass), drawn without replacement,
    include a passing one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 ≤ c ≤ n and 1 ≤ k ≤ n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class PassAtK:
    pass_at: dict[int, float]  # k -> pass@k averaged over prompts
    correct: list[int]  # c: passing samples of each prompt
    n: int  # samples per prompt
    mean_reward: float  # over all samples
    completions: list[list[str]]  # each prompt's n decoded samples

    def table(self) -> dict[str, float]:
        return {f"pass@{k}": v for k, v in self.pass_at.items()} | {"mean_reward": self.mean_reward}


def pass_at_k(
    model,
    tokenizer,
    rows: list[dict],
    reward_fn: RewardFn,
    k_values: Sequence[int] = (1, 8),
    n: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    *,
    template: str = "auto",
    threshold: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    desc: str = "pass@k",
) -> PassAtK:
    """Sample `n` completions of each row's prompt (temperature `temperature`, the whole vocabulary, at most
    `max_new_tokens`), score them with `reward_fn` (a sample passes when its reward ≥ `threshold`) and estimate
    pass@k for each k in `k_values` (each ≤ n). `batch_size` sequences are sampled at a time (a progress bar named
    `desc` counts them); seeded by `seed`."""
    if any(not 1 <= k <= n for k in k_values):
        raise ValueError(f"every k must be in [1, n={n}], got {list(k_values)}")
    texts = [render_prompt(tokenizer, template, row["prompt"]) for row in rows]
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    jobs = [i for i in range(len(rows)) for _ in range(n)]  # prompt index of each sample, prompt-major
    torch.manual_seed(seed)
    decoded: list[str] = []
    for start in tqdm(range(0, len(jobs), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        batch = [ids[i] for i in jobs[start : start + batch_size]]
        out = generate(
            model,
            batch,
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
        decoded += [tokenizer.decode(t, skip_special_tokens=True) for t in out]
    rewards = score(reward_fn, [texts[i] for i in jobs], decoded, [rows[i] for i in jobs])
    correct = [sum(r >= threshold for r in rewards[p * n : (p + 1) * n]) for p in range(len(rows))]
    pass_at = {k: sum(estimate_pass_at_k(n, c, k) for c in correct) / max(len(rows), 1) for k in k_values}
    completions = [decoded[p * n : (p + 1) * n] for p in range(len(rows))]
    return PassAtK(pass_at, correct, n, sum(rewards) / max(len(rewards), 1), completions)
