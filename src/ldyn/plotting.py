"""Figures from a run directory's files alone (no model, no torch): `plot_run(RUN_DIR)`, the CLI's `ldyn plot`.

- probe_groups.png  mean change of log π(y | x_u) since step 0, per response type, in the paper's groups (chosen,
                    rejected, irrelevant, random, argmax), plus the chosen-rejected margin
- probe_spread.png  one panel per type: every prompt's change (thin lines), the mean, the share of prompts up
- peakiness.png     ‖A‖_F per type and the teacher-forced argmax / except-argmax log-probs along chosen
- training.png      loss, chosen/rejected log-probs, reward margin and gradient norm per update
- probe_summary.csv the numbers behind the probe figures (one row per step and type)
Dashed vertical lines mark where one training stage (e.g. SFT) ends and the next (e.g. DPO) begins.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldyn.data.probesets import GROUPS, SYMBOLS  # noqa: E402
from ldyn.runs import FIGURES, Run, load_run  # noqa: E402

PALETTES = {"chosen": "Blues", "rejected": "Oranges", "irrelevant": "Reds", "random": "Greys", "argmax": "Greens"}
GROUP_OF = {t: g for g, types in GROUPS.items() for t in types}


def label(t: str) -> str:
    return f"{SYMBOLS[t]} {t}" if t in SYMBOLS else t


def color(t: str) -> str:
    group = GROUP_OF.get(t)
    if group is None:
        return "grey"
    members = GROUPS[group]
    return plt.get_cmap(PALETTES[group])(0.9 - 0.45 * members.index(t) / max(len(members) - 1, 1))


def probe_table(run: Run, key: str = "logp_sum") -> dict[str, tuple[np.ndarray, list[str], np.ndarray]]:
    """type -> (steps (S,), example ids (E,), values (S, E)); NaN where a value is missing."""
    cells: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for row in run.probes:
        if key in row:
            cells[row["type"]][row["step"]][row["example_id"]] = row[key]
    tables = {}
    for t, by_step in cells.items():
        steps = sorted(by_step)
        ids = sorted({e for values in by_step.values() for e in values})
        values = np.array([[by_step[s].get(e, np.nan) for e in ids] for s in steps], dtype=float)
        tables[t] = (np.array(steps), ids, values)
    return tables


def ordered_types(tables) -> list[str]:
    known = [t for group in GROUPS.values() for t in group if t in tables]
    return known + sorted(t for t in tables if t not in known and t != "except_argmax")


def stage_spans(run: Run) -> list[tuple[int, int, str]]:
    """(first step, last step, name) of each stage, in order, from the metrics (or probe) rows."""
    last: dict[str, int] = {}
    for row in run.metrics or run.probes:
        last[row["stage"]] = max(last.get(row["stage"], 0), row["step"])
    spans, start = [], 0
    for name, end in sorted(last.items(), key=lambda kv: kv[1]):
        spans.append((start, end, name))
        start = end
    return spans


def mark_stages(ax, spans) -> None:
    """A dashed line where each stage ends and the next begins, and each stage's name above its span."""
    for i, (start, end, name) in enumerate(spans):
        if i < len(spans) - 1:
            ax.axvline(end, color="0.5", linestyle="--", linewidth=1)
        if len(spans) > 1:
            ax.text((start + end) / 2, 0.98, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=8, color="0.35", clip_on=True)


def write_summary(tables, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "type", "n", "mean_logp", "mean_change", "median_change", "q10_change", "q90_change",
                    "share_up"])
        for t in ordered_types(tables) + (["except_argmax"] if "except_argmax" in tables else []):
            steps, _, values = tables[t]
            delta = values - values[0]
            for s, v, d in zip(steps, values, delta):
                ok = ~np.isnan(d)
                if not ok.any():
                    continue
                q10, q50, q90 = np.quantile(d[ok], [0.1, 0.5, 0.9])
                w.writerow([s, t, int(ok.sum()), f"{v[ok].mean():.4f}", f"{d[ok].mean():.4f}", f"{q50:.4f}",
                            f"{q10:.4f}", f"{q90:.4f}", f"{(d[ok] > 0).mean():.4f}"])


def plot_groups(run: Run, tables) -> plt.Figure:
    spans = stage_spans(run)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    for ax, group in zip(axes.flat, GROUPS):
        for t in GROUPS[group]:
            if t in tables:
                steps, _, values = tables[t]
                ax.plot(steps, np.nanmean(values - values[0], axis=1), marker="o", ms=3, color=color(t),
                        label=label(t))
        ax.axhline(0, color="0.8", linewidth=0.8)
        mark_stages(ax, spans)
        ax.set_title(f"{group} group")
        ax.set_ylabel("mean Δ log π since step 0 (nats)")
        ax.legend(fontsize=8)
    ax = axes.flat[5]
    if "chosen" in tables and "rejected" in tables:
        steps, _, chosen = tables["chosen"]
        _, _, rejected = tables["rejected"]
        ax.plot(steps, np.nanmean(chosen - rejected, axis=1), marker="o", ms=3, color="purple",
                label="log π(y⁺) − log π(y⁻)")
        ax.legend(fontsize=8)
    mark_stages(ax, spans)
    ax.set_title("margin")
    ax.set_ylabel("mean over prompts (nats)")
    for ax in axes[1]:
        ax.set_xlabel("update")
    fig.suptitle(f"{run.path.name}: teacher-forced log-probabilities of each response type "
                 f"({len(tables.get('chosen', (0, [], 0))[1])} probe prompts)")
    fig.tight_layout()
    return fig


def plot_spread(run: Run, tables) -> plt.Figure:
    types = ordered_types(tables)
    cols = 4
    rows = math.ceil(len(types) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), sharex=True, squeeze=False)
    spans = stage_spans(run)
    for ax, t in zip(axes.flat, types):
        steps, _, values = tables[t]
        delta = values - values[0]
        ax.plot(steps, delta, color=color(t), alpha=0.25, linewidth=0.7)
        ax.plot(steps, np.nanmean(delta, axis=1), color="black", linewidth=2)
        ax.axhline(0, color="0.6", linewidth=0.8)
        mark_stages(ax, spans)
        up = np.nanmean(delta[-1] > 0) * 100
        ax.set_title(f"{label(t)}: {up:.0f}% of prompts up", fontsize=9)
    for ax in axes.flat[len(types):]:
        ax.axis("off")
    fig.suptitle("per-prompt change of log π(y | x_u) since step 0 (thin: one prompt; black: mean)")
    fig.tight_layout()
    return fig


def plot_peakiness(run: Run) -> plt.Figure:
    a_norm = probe_table(run, "a_norm")
    logp = probe_table(run, "logp_sum")
    spans = stage_spans(run)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for t in ordered_types(a_norm):
        steps, _, values = a_norm[t]
        ax1.plot(steps, np.nanmean(values - values[0], axis=1), color=color(t), label=label(t))
    ax1.set_title("peakiness: mean change of ‖A‖_F = sqrt(V − 2 + V·mean‖π‖²)")
    for t, style in (("argmax", "-"), ("except_argmax", ":"), ("chosen", "--")):
        if t in logp:
            steps, _, values = logp[t]
            ax2.plot(steps, np.nanmean(values - values[0], axis=1), style,
                     color="green" if t != "chosen" else color(t), label=label(t))
    ax2.axhline(0, color="0.8", linewidth=0.8)
    ax2.set_title("along chosen: mean Δ log π of y* (argmax), y^c (except argmax), y_u⁺")
    for ax in (ax1, ax2):
        mark_stages(ax, spans)
        ax.set_xlabel("update")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_training(run: Run) -> plt.Figure:
    panels = [("loss (log scale)", ["loss"]), ("log-probs of the batch (nats)", ["logps/chosen", "logps/rejected"]),
              ("reward margin β·h", ["rewards/margin"]), ("gradient norm (before clipping)", ["grad_norm"])]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    spans = stage_spans(run)
    for ax, (title, keys) in zip(axes, panels):
        ax.set_title(title)
        logged = [k for k in keys if any(k in r for r in run.metrics)]
        if not logged:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
            continue
        for key in logged:
            rows = [r for r in run.metrics if key in r]
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", label=key)
        mark_stages(ax, spans)
        if keys == ["loss"] and all(r["loss"] > 0 for r in run.metrics if "loss" in r):
            ax.set_yscale("log")  # SFT losses (summed nats) and DPO losses (< 1) on one axis
        ax.set_xlabel("update")
        if len(logged) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every figure of a run from its files; returns the written paths."""
    run = load_run(run_dir)
    out = run.path / FIGURES
    out.mkdir(exist_ok=True)
    figures = {}
    tables = probe_table(run)
    if tables:
        write_summary(tables, out / "probe_summary.csv")
        figures |= {"probe_groups": plot_groups(run, tables), "probe_spread": plot_spread(run, tables),
                    "peakiness": plot_peakiness(run)}
    if run.metrics:
        figures["training"] = plot_training(run)
    written = [out / "probe_summary.csv"] if tables else []
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written
