"""pass@k of an RL run's stage before and after it: `ldyn pass-at-k RUN_DIR`.

The stage (default: the run's first sampled one) is measured at its start -- the config's model, or the previous
stage's checkpoint -- and at its end (its checkpoint `checkpoints/<stage>/`), on the first `prompts` rows of its
training task and, with `probe.held_out`, on as many held-out rows: `n` samples of each prompt at the stage's own
temperature and completion length, scored by its reward (`generate.pass_at_k`, the unbiased estimator). Both
models see the same seeded draws, so the difference is the training's, not the sampler's. The numbers go to the
run's `pass_at_k.json`.
"""

from __future__ import annotations

import time

from ldyn.config import read_config
from ldyn.errors import LdynError, did_you_mean
from ldyn.generate.pass_at_k import pass_at_k
from ldyn.losses import get_loss
from ldyn.models.load import load_checkpoint, load_model
from ldyn.rl.tasks import load_reward
from ldyn.runs.directory import CONFIG, RunDir
from ldyn.train.grpo import rows_by_id
from ldyn.train.task_data import resolve

PASS_AT_K = "pass_at_k.json"


def run_pass_at_k(run_dir: str, stage: str | None = None, *, n: int = 8, ks=(1, 8), prompts: int = 32,
                  seed: int = 0) -> dict:  # fmt: skip
    """{"stage", "n", "temperature", "trained": {"before", "after"}, "held_out": {...}, "seconds"} (module docstring),
    also written to the run's pass_at_k.json."""
    if n < 1 or any(not 1 <= k <= n for k in ks):
        raise LdynError(f"every k must be between 1 and n={n}, got {list(ks)}", field="--k")
    out = RunDir(run_dir)
    if not out.exists():
        raise LdynError("not a run directory", file=run_dir)
    cfg = read_config(out.path / CONFIG)
    sampled = [s.name for s in cfg.stages if get_loss(s.loss.name).sampled]
    name = stage or (sampled[0] if sampled else None)
    if name not in sampled:
        hint = did_you_mean(name, sampled) if name else ""
        raise LdynError(f"no sampled (RL) stage '{name}' in this run{hint}", field="--stage")
    index = [s.name for s in cfg.stages].index(name)
    rl, adapter = cfg.stages[index].rl, bool(cfg.model.peft.r)
    end = out.checkpoints / name
    if not end.is_dir():
        raise LdynError(f"stage '{name}' has not finished: no checkpoint {end}", file=run_dir)
    sources = {"trained": (cfg.data.train, "data.train", cfg.data.split), "held_out": (cfg.probe.held_out,
               "probe.held_out", "train")}  # fmt: skip
    sets = {
        key: list(rows_by_id(resolve(source, field), split, cfg.seed, 0).values())[:prompts]
        for key, (source, field, split) in sources.items()
        if source
    }
    started, result = time.perf_counter(), {"stage": name, "n": n, "temperature": rl.temperature, "reward": rl.reward}
    reward = load_reward(rl.reward)
    models = {"before": lambda: _start(out, cfg, index, adapter), "after": lambda: load_checkpoint(
        end, cfg.model, cfg.seed, adapter=adapter)}  # fmt: skip
    for when, load in models.items():
        model, tokenizer = load()
        for key, rows in sets.items():
            got = pass_at_k(model, tokenizer, rows, reward, ks, n, rl.temperature, rl.max_completion_length,
                            template=cfg.data.template, seed=seed, desc=f"{when}: {key}")  # fmt: skip
            result.setdefault(key, {})[when] = got.table()
        del model
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.write_json(PASS_AT_K, result)
    return result


def _start(out: RunDir, cfg, index: int, adapter: bool):
    """The model at the start of stage `index`: the config's, or the previous stage's checkpoint."""
    if index == 0:
        return load_model(cfg.model, cfg.seed)
    return load_checkpoint(out.checkpoints / cfg.stages[index - 1].name, cfg.model, cfg.seed, adapter=adapter)


def format_pass_at_k(result: dict) -> list[str]:
    """The console's lines: one per prompt set, each value before → after."""
    lines = [f"stage '{result['stage']}': {result['n']} samples per prompt at temperature {result['temperature']}, "
             f"reward {result['reward']} ({result['seconds']} s)"]  # fmt: skip
    for key in ("trained", "held_out"):
        if key in result:
            before, after = result[key]["before"], result[key]["after"]
            cells = [f"{m} {before[m]:.3f} → {after[m]:.3f}" for m in before]
            lines.append(f"  {key}: " + ", ".join(cells))
    return lines
