"""The probe responses an RL run samples from its own starting model, before its first update.

With a sampled stage (`loss.name=grpo`), the probed prompts get, beside the types their rows have:

- `rollout_correct` / `rollout_incorrect`: of G = rl.num_generations samples of each probed prompt by the step-0
  model, under the first sampled stage's settings (temperature, top_k, max_completion_length) and scored by its
  reward with the row's fields, the first whose reward is at least `CORRECT` (1, as the stage's pass_rate counts)
  and the first below it -- preferring samples that ended with EOS, since a probe response ends with EOS. A prompt
  whose samples are all right (or all wrong) has no response of the other type. They are probed when
  `probe.types` names them, or is `auto`.

With `probe.held_out` (a probe source: a file or a task with another seed, e.g. `arithmetic:seed=1`), its first
`probe.n` prompts each get `SAMPLES` samples of the step-0 model at temperature 1 over the whole vocabulary, probed
as rows of their own (ids "held_out/<id>#<k>", type `held_out_sample`). Since they are drawn from π₀, the mean
over them of log π₀(y|x) − log π_t(y|x) is an unbiased Monte-Carlo estimate of the sequence-level KL(π₀ ‖ π_t)
on prompts the run never trains on (`runs/rl_figures.py` draws it).

Both are sampled once, seeded by the run's seed, after the model is loaded and before the run directory is
written; data.json keeps them (`rollouts`, `held_out`), so a resumed run probes the very same responses.
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from ldyn.config import RunConfig
from ldyn.data.formats import Example
from ldyn.data.probesets import HELD_OUT_SAMPLE, ROLLOUT_TYPES, load_probe_set
from ldyn.data.tokenize import tokenize_examples
from ldyn.errors import LdynError
from ldyn.generate.sampling import generate
from ldyn.losses import RLConfig, get_loss
from ldyn.models.modes import eval_mode
from ldyn.rl.tasks import load_reward, score
from ldyn.train.grpo import rows_by_id
from ldyn.train.task_data import resolve

CORRECT = 1.0
SAMPLES = 4  # samples per held-out prompt
HELD_OUT_TOKENS = 64  # the longest held-out sample when no stage samples (else rl.max_completion_length)


def requested(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(the probe types the probe file must have, the rollout types to sample): `auto` asks for the rollouts when a
    stage samples."""
    types, sampled = cfg.probe.types, any(get_loss(s.loss.name).sampled for s in cfg.stages)
    rollouts = [t for t in ROLLOUT_TYPES if t in types or (sampled and list(types) == ["auto"])]
    return [t for t in types if t not in ROLLOUT_TYPES], rollouts


def _prompt_ids(tokenizer, examples: list[Example], data) -> list[list[int]]:
    """Each example's prompt as training renders and truncates it (its `chosen` only to get through the reader)."""
    bare = [replace(e, responses={"chosen": e.responses.get("chosen", "")}) for e in examples]
    return [row.prompt for row in tokenize_examples(tokenizer, bare, data)]


def _sample(model, tokenizer, prompts: list[list[int]], k: int, seed: str, **settings) -> list[list[list[int]]]:
    """k samples of each prompt (token ids), seeded by `seed`, the model in eval mode; the caller's RNG untouched."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eval_mode(model):
        torch.manual_seed(random.Random(seed).getrandbits(63))
        flat = generate(model, [p for p in prompts for _ in range(k)], tokenizer.pad_token_id,
                        tokenizer.eos_token_id, **settings)  # fmt: skip
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


def sample_rollouts(model, tokenizer, examples: list[Example], source, rl: RLConfig, data, seed: int) -> dict:
    """{example id: {rollout type: text}} for the probed `examples` of `source` (the rows' fields feed the reward)."""
    fields = rows_by_id(source, "train", seed, 0)
    prompts = _prompt_ids(tokenizer, examples, data)
    groups = _sample(
        model, tokenizer, prompts, rl.num_generations, f"{seed}/rollout-probes",
        max_new_tokens=rl.max_completion_length, temperature=rl.temperature, top_k=rl.top_k,
    )  # fmt: skip
    reward, eos = load_reward(rl.reward), tokenizer.eos_token_id
    out = {}
    for e, prompt, group in zip(examples, prompts, groups):
        texts = [tokenizer.decode(s, skip_special_tokens=True) for s in group]
        rewards = score(reward, [tokenizer.decode(prompt)] * len(group), texts, [fields.get(e.id, {})] * len(group))
        ended = sorted(range(len(group)), key=lambda i: group[i][-1:] != [eos])  # EOS-ended first, else in order
        picked = {
            "rollout_correct": next((texts[i] for i in ended if rewards[i] >= CORRECT), None),
            "rollout_incorrect": next((texts[i] for i in ended if rewards[i] < CORRECT), None),
        }
        out[e.id] = {t: text for t, text in picked.items() if text is not None and text.strip()}
    return out


def with_rollouts(examples: list[Example], rollouts: dict, types: list[str]) -> list[Example]:
    """The examples with their sampled rollout responses of `types` added."""
    return [
        replace(e, responses=e.responses | {t: v for t, v in rollouts.get(e.id, {}).items() if t in types})
        for e in examples
    ]


def sample_held_out(model, tokenizer, source, n: int, data, seed: int, max_new_tokens: int) -> list[dict]:
    """The held-out probe rows: `SAMPLES` samples of π₀ at temperature 1 for each of the first `n` prompts of
    `source`, as {"id", "prompt", HELD_OUT_SAMPLE} rows (kept in data.json as they are)."""
    examples, _ = load_probe_set(source, ["chosen"], n, seed, "probe.n")
    prompts = _prompt_ids(tokenizer, examples, data)
    groups = _sample(model, tokenizer, prompts, SAMPLES, f"{seed}/held-out", max_new_tokens=max_new_tokens)
    rows = []
    for e, group in zip(examples, groups):
        for k, tokens in enumerate(group):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if text.strip():
                rows.append({"id": f"held_out/{e.id}#{k}", "prompt": e.prompt, HELD_OUT_SAMPLE: text})
    return rows


def held_out_examples(rows: list[dict]) -> list[Example]:
    """The held-out rows as probe examples, with their sample as their only response."""
    return [Example(r["id"], r["prompt"], {HELD_OUT_SAMPLE: r[HELD_OUT_SAMPLE]}) for r in rows]


def add_sampled(
    cfg: RunConfig,
    source,
    probed: list[Example],
    types: list[str],
    rollout_types: list[str],
    n: int,
    tokenizer,
    model,
    kept: dict | None,
) -> tuple[list[Example], list[str], dict]:
    """The probe set with what the step-0 `model` samples for it (the module docstring), or with what a resumed
    run `kept` ({"rollouts": ..., "held_out": ...} of its data.json; `model` None): (examples, types, what data.json
    keeps)."""
    sampled = next((s for s in cfg.stages if get_loss(s.loss.name).sampled), None)
    kept = {k: v for k, v in (kept or {}).items() if k in ("rollouts", "held_out")}
    wanted = {"rollouts": bool(rollout_types and sampled), "held_out": bool(cfg.probe.held_out)}
    missing = [k for k, want in wanted.items() if want and k not in kept]
    if missing and model is None:
        raise LdynError(f"data.json keeps no step-0 samples ({missing[0]}) to probe again: start the run anew",
                        field="probe.held_out" if missing[0] == "held_out" else "probe.types")  # fmt: skip
    if wanted["rollouts"]:
        if "rollouts" not in kept:
            kept["rollouts"] = sample_rollouts(model, tokenizer, probed, source, sampled.rl, cfg.data, cfg.seed)
        probed, types = with_rollouts(probed, kept["rollouts"], rollout_types), types + rollout_types
    if wanted["held_out"]:
        if "held_out" not in kept:
            tokens = sampled.rl.max_completion_length if sampled else HELD_OUT_TOKENS
            held = resolve(cfg.probe.held_out, "probe.held_out")
            kept["held_out"] = sample_held_out(model, tokenizer, held, n, cfg.data, cfg.seed, tokens)
        probed, types = probed + held_out_examples(kept["held_out"]), types + [HELD_OUT_SAMPLE]
    return probed, types, kept
