"""Figures across runs for the claims report: the paper's Figure 5 (baseline vs extend) and run comparisons
(on- vs off-policy, the learning-rate sweep). Per-run figures are in `ldyn/runs/figures.py`."""

from __future__ import annotations

import numpy as np

from ldyn.runs.directory import Run, probe_table, stage_spans
from ldyn.runs.style import mark_stages, plt


def _mean_series(run: Run, types: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, mean over `types` of the mean log-prob over prompts); None if the run probed none of them."""
    tables = probe_table(run)
    present = [t for t in types if t in tables]
    if not present:
        return None
    steps = tables[present[0]][0]
    rows = [np.nanmean(tables[t][2], axis=1) for t in present if np.array_equal(tables[t][0], steps)]
    return steps, np.mean(rows, axis=0)


def other_types(run: Run) -> list[str]:
    return [t for t in probe_table(run) if t not in ("chosen", "rejected", "argmax", "except_argmax")]


def plot_extend_vs_baseline(baseline: Run, extend: Run) -> plt.Figure:
    """The paper's Figure 5: chosen, rejected, all other responses and the argmax against updates, for the baseline
    (SFT on chosen, then DPO) and extend (SFT on chosen ∪ rejected, then DPO), with the SFT/DPO boundary."""
    panels = [
        ("chosen y_u⁺", lambda r: ["chosen"]),
        ("rejected y_u⁻", lambda r: ["rejected"]),
        ("all other responses (mean over types)", other_types),
        ("argmax y* (along y_u⁺)", lambda r: ["argmax"]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (title, types) in zip(axes, panels):
        for run, name, c in ((baseline, "baseline", "tab:blue"), (extend, "extend", "tab:orange")):
            series = _mean_series(run, types(run))
            if series is not None:
                ax.plot(*series, marker="o", color=c, label=f"{name} ({run.path.name})")
        mark_stages(ax, stage_spans(baseline))
        ax.set_title(title)
        ax.set_xlabel("update")
        ax.set_ylabel("mean log π (nats)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("baseline vs extend: SFT, then DPO from the SFT model (mean over probed prompts)")
    fig.tight_layout()
    return fig


def plot_run_comparison(runs: list[tuple[str, Run]], title: str) -> plt.Figure:
    """Change since step 0 of chosen, all other responses and the argmax, one line per labelled run."""
    panels = [
        ("Δ chosen y_u⁺", lambda r: ["chosen"]),
        ("Δ all other responses", other_types),
        ("Δ argmax y*", lambda r: ["argmax"]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (name, types) in zip(axes, panels):
        for label_, run in runs:
            series = _mean_series(run, types(run))
            if series is not None:
                steps, values = series
                ax.plot(steps, values - values[0], marker="o", label=label_)
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.set_title(name)
        ax.set_xlabel("update")
        ax.set_ylabel("nats")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
