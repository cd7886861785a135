"""The probe set of an RL trainer's own rollouts: `LearningDynamicsCallback()` in TRL's `GRPOTrainer` or
`RLOOTrainer` on a prompt-only `train_dataset` (a `prompt` column and the fields its reward functions read), which
has no response of its own to probe.

The trainer keeps its latest generation batch -- each prompt, its completions, each reward function's reward --
in `trainer._logs` (read here, never patched: what it prints and writes with `log_completions=True`). Its first
generation batch is sampled inside the first update, by the step-0 policy, so the callback reads it at that
update's `on_pre_optimizer_step`, while the model is still θ₀, and probes its step-0 round there. For each prompt
of that batch (the first `n`, in the order sampled; ids "rollout/<k>") with its group of completions:

- `chosen`            the completion with the highest reward (the first on a tie): the group's y⁺, which the update
                      pushes up most; the argmax response is measured along it
- `rollout_correct`   the first completion whose reward is at least `CORRECT` (1, as the pass rate of ldyn's own
                      GRPO stage counts it), if any
- `rollout_incorrect` the first whose reward is below it, if any

The reward is the trainer's: each function's, weighted by `reward_weights`; completions no function scored and
empty ones are left out. The derived types of `trainer_data.probe_rows` (`irr_train`, `random_permute`, ...) are
derived from these `chosen`s. The rows are kept in the run's data.json (`rollouts`), which a resumed training
probes again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ldyn.data.formats import is_empty
from ldyn.data.probesets import ROLLOUT_TYPES
from ldyn.errors import LdynError
from ldyn.integrations.trainer_data import dataset_rows, probe_rows
from ldyn.runs.directory import DATA

CORRECT = 1.0
SOURCE = "the trainer's step-0 rollouts"


def sees_rollouts(trainer) -> bool:
    """Whether the trainer keeps its rollouts where `rollout_rows` reads them (GRPOTrainer's, RLOOTrainer's)."""
    logs = getattr(trainer, "_logs", None)
    return isinstance(logs, dict) and all(k in logs for k in ("prompt", "completion", "rewards"))


def probes_rollouts(trainer) -> bool:
    """Whether `LearningDynamicsCallback()` probes the trainer's rollouts: an RL trainer whose train_dataset has no
    response (its first row's)."""
    if trainer is None or not sees_rollouts(trainer):
        return False
    try:
        return not dataset_rows(trainer.train_dataset, "train_dataset", 1)
    except LdynError:  # an IterableDataset, or no text fields: the rollouts need neither
        return True


def rollout_rows(trainer, n: int, seed: int, run_dir: Path) -> tuple[list[dict], dict]:
    """The probe rows of the step-0 rollouts (the module docstring), with the derived types, and a report for
    data.json; on a resumed training, those the run's data.json kept."""
    if trainer.state.global_step > 0:
        data = run_dir / DATA
        kept = json.loads(data.read_text()).get("rollouts") if data.is_file() else None
        if not kept:
            raise LdynError(
                f"resuming at step {trainer.state.global_step}, but {run_dir} holds no step-0 rollouts to probe: "
                "pass probes explicitly, e.g. LearningDynamicsCallback('probes.jsonl')"
            )
        groups = kept
    else:
        groups = _groups(trainer, n)
    rows, report = probe_rows(groups, None, n, 0, seed)
    present = [t for t in ROLLOUT_TYPES if any(t in r for r in rows)]
    rows = [r | {t: r.get(t) for t in present} for r in rows]  # a prompt with no such rollout: none to probe
    report = report | {"probe_source": SOURCE, "rollouts": groups}
    del report["irr_test_from"], report["probe_held_out"]
    return rows, report


def _groups(trainer, n: int) -> list[dict]:
    """One row per prompt of the generation batch in `trainer._logs`: prompt, chosen and the rollout types."""
    logs = trainer._logs
    prompts, completions = list(logs["prompt"]), [_response(c) for c in logs["completion"]]
    names = list(getattr(trainer, "reward_func_names", logs["rewards"]))
    weights = getattr(trainer, "reward_weights", None)
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    weighted = [(w, list(logs["rewards"][name])) for w, name in zip(weights, names) if name in logs["rewards"]]
    if not prompts or not weighted or any(len(r) != len(prompts) for _, r in weighted):
        raise LdynError(
            f"{type(trainer).__name__} shows no rollouts of its first update to probe: pass probes explicitly, "
            "e.g. LearningDynamicsCallback('probes.jsonl') or a datasets.Dataset with prompt/chosen/rejected"
        )
    groups: dict[str, dict] = {}
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        scored = [(w, r[i]) for w, r in weighted if r[i] is not None and not math.isnan(r[i])]
        group = groups.setdefault(repr(prompt), {"prompt": prompt, "scored": []})
        if scored and not is_empty(completion):
            group["scored"].append((sum(w * r for w, r in scored), completion))
    rows = []
    for group in groups.values():
        scored = group["scored"]
        if not scored or len(rows) == (n or len(groups)):
            continue
        row = {"id": f"rollout/{len(rows)}", "prompt": group["prompt"], "chosen": max(scored, key=lambda s: s[0])[1]}
        row["rollout_correct"] = next((c for r, c in scored if r >= CORRECT), None)
        row["rollout_incorrect"] = next((c for r, c in scored if r < CORRECT), None)
        rows.append({k: v for k, v in row.items() if v is not None})
    if not rows:
        raise LdynError(
            "the step-0 rollouts are all empty or unscored: nothing to probe; pass probes explicitly, e.g. "
            "LearningDynamicsCallback('probes.jsonl')"
        )
    return rows


def _response(completion):
    """A completion as a probe response: a text as it is; a conversational one (its assistant turns, tool calls
    left out) as one assistant message."""
    if isinstance(completion, str):
        return completion
    text = "".join(str(m.get("content") or "") for m in completion if m.get("role") == "assistant")
    return [{"role": "assistant", "content": text}]
