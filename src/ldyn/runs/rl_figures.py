"""An RL run's figure and its numbers, from its files alone: rl.png and rl_summary.csv (`plot_run` draws them for
a run with a sampled stage or rollout probes).

rl.png, six panels:
1. reward and pass rate per update (and the share of groups with one reward for all: no signal);
2. the mean change of log π since step 0 per probed type: the model's own step-0 rollouts that were right and
   wrong, the reference answer (chosen), a near miss (rejected), another question's answer (irr_train, the
   interference of learning the others), unrelated text (irr_hum) and the argmax along chosen;
3. each prompt's change of log π of its correct step-0 rollout (thin lines), their mean, and the share that rose:
   lazy likelihood displacement is most of them flat or falling;
4. entropy against covariance per update: Cov(log π, A) of update t's rollouts against the change of the policy's
   entropy on its completions from update t to t+1 (Cui et al.: ΔH ≈ −η·Cov; the completions differ from one
   update to the next, so each point is noisy), with their correlation;
5. KL(π₀ ‖ π_t) on the held-out prompts (`probe.held_out`: the mean drop of log π of π₀'s own samples there), and
   the per-token entropy along the probe prompts' step-0 rollouts;
6. the decomposition of the updates by advantage sign: the SGD kernel's mean predicted Δ log π per type from the
   positive-advantage rollouts and from the negative ones (decomposition.jsonl, with `decompose.every`).

rl_summary.csv: one row per probe round with the panels' numbers (the update panels' are in metrics.jsonl).
"""

from __future__ import annotations

import numpy as np

from ldyn.data.probesets import HELD_OUT_SAMPLE, ROLLOUT_TYPES, SYMBOLS
from ldyn.runs.directory import Run, probe_table, stage_spans
from ldyn.runs.style import mark_stages, plain_numbers, plt

NAMES = {
    "rollout_correct": "own rollout, right",
    "rollout_incorrect": "own rollout, wrong",
    "chosen": "reference answer",
    "rejected": "near miss",
    "irr_train": "another question's answer",
    "irr_hum": "unrelated text",
    "argmax": "argmax along chosen",
}
COLORS = {"rollout_correct": "tab:green", "rollout_incorrect": "tab:red", "chosen": "tab:blue",
          "rejected": "tab:orange", "irr_train": "tab:purple", "irr_hum": "tab:brown", "argmax": "black"}  # fmt: skip


def is_rl(run: Run) -> bool:
    """Whether the run has an RL figure to draw: a sampled stage's metrics or rollout probes."""
    return any("pass_rate" in m for m in run.metrics) or any(p["type"] in ROLLOUT_TYPES for p in run.probes)


def changes(tables: dict, t: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, per-round per-prompt change of summed log π since the first round (S, E)) of type t."""
    if t not in tables:
        return None
    steps, _, values = tables[t]
    return steps, values - values[0]


def held_out_kl(tables: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, KL(π₀ ‖ π_t) estimates): the mean over π₀'s held-out samples of log π₀(y) − log π_t(y)."""
    got = changes(tables, HELD_OUT_SAMPLE)
    return None if got is None else (got[0], -np.nanmean(got[1], axis=1))


def rollout_entropy(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, mean per-token entropy along the probe prompts' step-0 rollouts, both types together)."""
    tables = probe_table(run, "entropy")
    present = [tables[t] for t in ROLLOUT_TYPES if t in tables]
    if not present:
        return None
    steps = present[0][0]
    values = np.concatenate([v for s, _, v in present if len(s) == len(steps)], axis=1)
    return steps, np.nanmean(values, axis=1)


def entropy_steps(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(Cov(log π, A) of update t, the entropy of update t+1's completions minus update t's), for consecutive
    updates that logged both."""
    rows = {m["step"]: m for m in run.metrics if "entropy" in m and "cov_logp_advantage" in m}
    steps = [t for t in sorted(rows) if t + 1 in rows]
    cov = np.array([rows[t]["cov_logp_advantage"] for t in steps])
    return cov, np.array([rows[t + 1]["entropy"] - rows[t]["entropy"] for t in steps])


def summary_rows(run: Run) -> list[dict]:
    """One row per probe round: each type's mean change, the share of correct rollouts up, the KL and entropy."""
    tables = probe_table(run)
    kl, entropy = held_out_kl(tables), rollout_entropy(run)
    steps = sorted({p["step"] for p in run.probes})
    rows = []
    for i, step in enumerate(steps):
        row: dict = {"step": step}
        for t in NAMES:
            got = changes(tables, t)
            if got is not None and i < len(got[0]):
                row[f"dlogp_{t}"] = float(np.nanmean(got[1][i]))
        got = changes(tables, "rollout_correct")
        if got is not None and i < len(got[0]):
            finite = got[1][i][np.isfinite(got[1][i])]
            row["share_correct_up"] = float(np.mean(finite > 0)) if len(finite) else float("nan")
        if kl is not None and i < len(kl[0]):
            row["kl_held_out"] = float(kl[1][i])
        if entropy is not None and i < len(entropy[0]):
            row["entropy_rollouts"] = float(entropy[1][i])
        rows.append(row)
    return rows


def plot_rl(run: Run, sgd_split) -> plt.Figure:
    """rl.png (the module docstring); `sgd_split(ax, labels)` draws panel 6 (figures.py's, with the run's rows)."""
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.4))
    spans, tables = stage_spans(run), probe_table(run)
    _rewards(axes[0, 0], run, spans)
    _types(axes[0, 1], tables, spans)
    _correct(axes[0, 2], tables, spans)
    _entropy_cov(axes[1, 0], run)
    _kl(axes[1, 1], run, tables, spans)
    ax = axes[1, 2]
    if any("sgd_positive" in r for r in run.decomposition):
        sgd_split(ax, ("from A > 0 rollouts (pushed up)", "from A < 0 rollouts (pushed down)"))  # figures.py's
        ax.set_title("decomposition by advantage sign: SGD kernel −η·A·K·G", fontsize=9)
    else:
        _empty(ax, "no decomposition in this run\n(decompose.every > 0 draws it)")
    fig.suptitle(f"{run.label}: learning dynamics of RL finetuning")
    fig.tight_layout()
    return fig


def _empty(ax, note: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def _rewards(ax, run: Run, spans) -> None:
    rows = [m for m in run.metrics if "reward" in m]
    if not rows:
        return _empty(ax, "no rewards logged")
    steps = [m["step"] for m in rows]
    for key, name in (("reward", "mean reward"), ("pass_rate", "pass rate (reward ≥ 1)"),
                      ("frac_reward_zero_std", "groups with no signal")):  # fmt: skip
        if all(key in m for m in rows):
            ax.plot(steps, [m[key] for m in rows], marker=".", label=name, linestyle=":" if "frac" in key else "-")
    mark_stages(ax, spans)
    ax.set_title("rewards of the rollouts, per update", fontsize=9)
    ax.set_xlabel("update")
    ax.legend(fontsize=7)


def _types(ax, tables: dict, spans) -> None:
    for t, name in NAMES.items():
        got = changes(tables, t)
        if got is not None:
            name = f"{name} ({SYMBOLS.get(t, t)})"
            ax.plot(got[0], np.nanmean(got[1], axis=1), marker=".", color=COLORS[t], label=name)
    ax.axhline(0, color="0.5", linewidth=0.8)
    mark_stages(ax, spans)
    ax.set_title("mean Δ log π(y | x) since step 0, per probed response", fontsize=9)
    ax.set_xlabel("update")
    ax.set_ylabel("Δ log π (nats)")
    plain_numbers(ax.yaxis)
    ax.legend(fontsize=7)


def _correct(ax, tables: dict, spans) -> None:
    got = changes(tables, "rollout_correct")
    if got is None:
        return _empty(ax, "no correct step-0 rollout was probed")
    steps, d = got
    for column in d.T:
        ax.plot(steps, column, color="tab:green", alpha=0.3, linewidth=0.8)
    ax.plot(steps, np.nanmean(d, axis=1), color="tab:green", linewidth=2.2, marker=".", label="mean")
    last = d[-1][np.isfinite(d[-1])]
    ax.axhline(0, color="0.5", linewidth=0.8)
    mark_stages(ax, spans)
    ax.set_title(f"each prompt's correct step-0 rollout: {np.sum(last > 0)} of {len(last)} up at the end", fontsize=9)
    ax.set_xlabel("update")
    ax.set_ylabel("Δ log π (nats)")
    plain_numbers(ax.yaxis)


def _entropy_cov(ax, run: Run) -> None:
    cov, dh = entropy_steps(run)
    if len(cov) < 2:
        return _empty(ax, "fewer than two consecutive updates\nlogged entropy and covariance")
    ax.scatter(cov, dh, s=16, color="tab:blue")
    r = float(np.corrcoef(cov, dh)[0, 1]) if cov.std() > 0 and dh.std() > 0 else float("nan")
    slope, intercept = np.polyfit(cov, dh, 1) if cov.std() > 0 else (0.0, float(dh.mean()))
    xs = np.linspace(cov.min(), cov.max(), 2)
    ax.plot(xs, slope * xs + intercept, color="0.4", linewidth=0.9, linestyle="--")
    ax.axhline(0, color="0.7", linewidth=0.8)
    ax.axvline(0, color="0.7", linewidth=0.8)
    ax.set_title(f"entropy change vs Cov(log π, A), per update: r = {r:.2f} (theory: < 0)", fontsize=9)
    ax.set_xlabel("Cov(log π, A) of update t's rollouts")
    ax.set_ylabel("H(update t+1's completions) − H(t) (nat/token)")
    plain_numbers(ax.xaxis)
    plain_numbers(ax.yaxis)


def _kl(ax, run: Run, tables: dict, spans) -> None:
    kl, entropy = held_out_kl(tables), rollout_entropy(run)
    if kl is None and entropy is None:
        return _empty(ax, "no held-out samples (probe.held_out)\nand no rollouts probed")
    if kl is not None:
        ax.plot(kl[0], kl[1], marker=".", color="tab:purple", label="KL(π₀ ‖ π_t), held-out prompts")
        ax.set_ylabel("KL (nats per response)")
    mark_stages(ax, spans)
    ax.set_xlabel("update")
    ax.set_title("drift off the task, and the entropy on the probe prompts", fontsize=9)
    if entropy is not None:
        twin = ax.twinx()
        twin.plot(entropy[0], entropy[1], marker=".", color="tab:gray", linestyle="--",
                  label="entropy along the step-0 rollouts")  # fmt: skip
        twin.set_ylabel("entropy (nat/token)")
        plain_numbers(twin.yaxis)
        twin.legend(fontsize=7, loc="lower right")
    if kl is not None:
        ax.legend(fontsize=7, loc="upper left")
