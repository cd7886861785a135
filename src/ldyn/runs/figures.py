"""Figures from a run directory's files alone (no model, no torch): `plot_run(RUN_DIR)`, the CLI's `ldyn plot`.

- probe_groups.png  mean change of log π(y | x_u) since step 0, per response type, in the paper's groups (chosen,
                    rejected, irrelevant, random, argmax), plus the chosen-rejected margin
- probe_spread.png  one panel per type: every prompt's change (thin lines), the mean, the share of prompts up
- peakiness.png     ‖A‖_F per type and the teacher-forced argmax / except-argmax log-probs along chosen
- training.png      loss, chosen/rejected log-probs, reward margin and gradient norm per update
- probe_summary.csv the numbers behind the probe figures (one row per step and type)
- decomposition.png predicted (first-order A·K·G) against observed Δ log π per response type, and the SGD-kernel
                    split into positive- and negative-gradient contributions (runs with decomposition records)
- decomposition_summary.csv  the numbers behind it, one row per response type
- rl.png, rl_summary.csv     an RL run's rewards, rollout types, entropy against covariance, held-out KL and the
                    decomposition by advantage sign (`rl_figures.py`)
`influence_figure(RUN_DIRS, OUT)` (the CLI's `ldyn influence`) draws the paper's appendix heatmap across runs;
`compare_figure(RUN_DIRS, OUT)` (`ldyn compare`) puts runs' probe curves side by side (e.g. LoRA against full).
Dashed vertical lines mark where one training stage (e.g. SFT) ends and the next (e.g. DPO) begins.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase

from ldyn.data.probesets import GROUPS, HELD_OUT_SAMPLE, SYMBOLS
from ldyn.errors import LdynError
from ldyn.runs.directory import FIGURES, Run, probe_table, stage_spans
from ldyn.runs.export import load_records
from ldyn.runs.rl_figures import is_rl, plot_rl
from ldyn.runs.rl_figures import summary_rows as rl_summary_rows
from ldyn.runs.style import color, label, mark_stages, ordered_types, plain_numbers, plt, scaled, write_rows
from ldyn.runtime.files import writable_folder, writing

LEGEND_PROMPTS = 20  # prompts named in probe_spread.png's legend (the rest counted)
WRITERS = sorted(FigureCanvasBase.get_supported_filetypes())  # the formats matplotlib writes
FIGURE_SUFFIXES = tuple(dict.fromkeys([".png", ".pdf", ".svg", *(f".{k}" for k in WRITERS)]))  # a figure's names


def save_figure(fig: plt.Figure, path: Path, field: str | None = None) -> Path:
    """Write a figure in the format its name's suffix names, atomically (`runtime.files.writing`), and close it."""
    try:
        with writing(path, field) as tmp:
            fig.savefig(tmp, format=path.suffix.lower().removeprefix("."), dpi=110)
    finally:
        plt.close(fig)
    return path


def save_rows(rows: list[dict], path: Path, field: str | None = None) -> Path:
    """The CSV beside a figure (`style.write_rows`), written atomically."""
    with writing(path, field) as tmp:
        write_rows(rows, tmp)
    return path


def write_summary(tables, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["step", "type", "n", "mean_logp", "mean_change", "median_change", "q10_change", "q90_change", "share_up"]
        )
        for t in ordered_types(tables) + (["except_argmax"] if "except_argmax" in tables else []):
            steps, _, values = tables[t]
            delta = values - values[0]
            for s, v, d in zip(steps, values, delta):
                ok = ~np.isnan(d)
                if not ok.any():
                    continue
                q10, q50, q90 = np.quantile(d[ok], [0.1, 0.5, 0.9])
                w.writerow(
                    [
                        s,
                        t,
                        int(ok.sum()),
                        f"{v[ok].mean():.4f}",
                        f"{d[ok].mean():.4f}",
                        f"{q50:.4f}",
                        f"{q10:.4f}",
                        f"{q90:.4f}",
                        f"{(d[ok] > 0).mean():.4f}",
                    ]
                )


def plot_groups(run: Run, tables) -> plt.Figure:
    spans = stage_spans(run)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    for ax, group in zip(axes.flat, GROUPS):
        for t in GROUPS[group]:
            if t in tables:
                steps, _, values = tables[t]
                ax.plot(steps, np.nanmean(values - values[0], axis=1), marker="o", ms=3, color=color(t), label=label(t))
        ax.axhline(0, color="0.8", linewidth=0.8)
        mark_stages(ax, spans)
        ax.set_title(f"{group} group")
        ax.set_ylabel("mean Δ log π since step 0 (nats)")
        if ax.get_legend_handles_labels()[0]:  # a probe set without this group's types leaves it empty
            ax.legend(fontsize=8)
    ax = axes.flat[5]
    if "chosen" in tables and "rejected" in tables:
        steps, _, chosen = tables["chosen"]
        _, _, rejected = tables["rejected"]
        ax.plot(
            steps,
            np.nanmean(chosen - rejected, axis=1),
            marker="o",
            ms=3,
            color="purple",
            label="log π(y⁺) − log π(y⁻)",
        )
        ax.legend(fontsize=8)
    mark_stages(ax, spans)
    ax.set_title("margin")
    ax.set_ylabel("mean over prompts (nats)")
    for ax in axes[1]:
        ax.set_xlabel("update")
    fig.suptitle(
        f"{run.label}: teacher-forced log-probabilities of each response type "
        f"({len(tables.get('chosen', (0, [], 0))[1])} probe prompts)"
    )
    fig.tight_layout()
    return fig


def prompt_colors(ids: list[str]) -> dict[str, tuple]:
    """One colour per probe prompt, the same in every panel: tab10 / tab20, a continuous map beyond 20 prompts."""
    if len(ids) <= 20:
        cmap = plt.get_cmap("tab10" if len(ids) <= 10 else "tab20")
        return {e: cmap(i) for i, e in enumerate(ids)}
    cmap = plt.get_cmap("viridis")
    return {e: cmap(i / (len(ids) - 1)) for i, e in enumerate(ids)}


def plot_spread(run: Run, tables) -> plt.Figure:
    types = ordered_types(tables)
    cols = 4
    rows = math.ceil(len(types) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), sharex=True, squeeze=False)
    spans = stage_spans(run)
    held = set(tables[HELD_OUT_SAMPLE][1]) if HELD_OUT_SAMPLE in tables else set()  # π₀'s samples, one row each
    ids = sorted({e for t in types for e in tables[t][1]} - held)
    colors = prompt_colors(ids) | {e: "0.8" for e in held}
    for i, (ax, t) in enumerate(zip(axes.flat, types)):
        steps, prompts, values = tables[t]
        delta = values - values[0]
        for j, e in enumerate(prompts):
            ax.plot(steps, delta[:, j], color=colors[e], alpha=0.7, linewidth=0.8, label=e)
        ax.plot(steps, np.nanmean(delta, axis=1), color="black", linewidth=2, label="mean")
        ax.axhline(0, color="0.6", linewidth=0.8)
        mark_stages(ax, spans)
        up = np.nanmean(delta[-1] > 0) * 100
        ax.set_title(f"{label(t)}: {up:.0f}% of prompts up", fontsize=9)
        ax.set_ylabel("Δ log π since step 0 (nats)", fontsize=8)
        if i + cols >= len(types):  # the lowest panel of its column: its x ticks are shown
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("update")
    for ax in axes.flat[len(types) :]:
        ax.axis("off")
    named = ids[:LEGEND_PROMPTS]  # a legend the figure's height holds
    handles = [plt.Line2D([], [], color=colors[e], linewidth=1.5) for e in named]
    names = named + ([f"… and {len(ids) - len(named)} more"] if len(ids) > len(named) else [])
    handles += [plt.Line2D([], [], linewidth=0)] if len(ids) > len(named) else []
    if held:
        handles.append(plt.Line2D([], [], color="0.8", linewidth=1.5))
        names.append(f"held-out samples ({len(held)})")
    handles.append(plt.Line2D([], [], color="black", linewidth=2))
    fig.legend(handles, [*names, "mean"], title="probe prompt", loc="center right", fontsize=8, title_fontsize=8)
    fig.suptitle("per-prompt change of log π(y | x_u) since step 0 (one line per probe prompt; black: mean)")
    inches = 0.7 + 0.06 * max(len(n) for n in [*names, "probe prompt"])  # the legend's width at fontsize 8
    fig.tight_layout(rect=(0, 0, 1 - inches / (4 * cols), 1))  # the prompts' legend to the right of the panels
    return fig


def plot_peakiness(run: Run) -> plt.Figure:
    a_norm = probe_table(run, "a_norm")
    logp = probe_table(run, "logp_sum")
    spans = stage_spans(run)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    change = {t: (a_norm[t][0], np.nanmean(a_norm[t][2] - a_norm[t][2][0], axis=1)) for t in ordered_types(a_norm)}
    factor, note = scaled(np.concatenate([c for _, c in change.values()]) if change else [])
    for t, (steps, mean) in change.items():
        ax1.plot(steps, mean * factor, color=color(t), label=label(t))
    ax1.set_title("peakiness: mean change of ‖A‖_F = sqrt(V − 2 + V·mean‖π‖²)")
    ax1.set_ylabel(f"mean Δ‖A‖_F since step 0 ({note + ', ' if note else ''}dimensionless)")
    for t, style in (("argmax", "-"), ("except_argmax", ":"), ("chosen", "--")):
        if t in logp:
            steps, _, values = logp[t]
            ax2.plot(
                steps,
                np.nanmean(values - values[0], axis=1),
                style,
                color="green" if t != "chosen" else color(t),
                label=label(t),
            )
    ax2.axhline(0, color="0.8", linewidth=0.8)
    ax2.set_title("along chosen: mean Δ log π of y* (argmax), y^c (except argmax), y_u⁺")
    ax2.set_ylabel("mean Δ log π since step 0 (nats)")
    for ax in (ax1, ax2):
        mark_stages(ax, spans)
        ax.set_xlabel("update")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_training(run: Run) -> plt.Figure:
    panels = [
        ("loss", ["loss"], "loss (nats)"),
        ("log-probs of the batch", ["logps/chosen", "logps/rejected"], "log π (nats)"),
        ("reward margin β·h", ["rewards/margin"], "β·h (nats)"),
        ("gradient norm (before clipping)", ["grad_norm"], "‖g‖₂"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    spans = stage_spans(run)
    for ax, (title, keys, unit) in zip(axes, panels):
        ax.set_title(title)
        logged = [k for k in keys if any(k in r for r in run.metrics)]
        if not logged:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
            ax.axis("off")  # no axes to read: the title and the note
            continue
        for key in logged:
            rows = [r for r in run.metrics if key in r]
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", label=key)
        mark_stages(ax, spans)
        losses = [r["loss"] for r in run.metrics if "loss" in r]
        if keys == ["loss"] and min(losses) > 0 and max(losses) > 10 * min(losses):
            ax.set_yscale("log")  # SFT losses (summed nats) and DPO losses (< 1) on one axis
            ax.set_title("loss (log scale)")
            plain_numbers(ax.yaxis)
        ax.set_xlabel("update")
        ax.set_ylabel(unit)
        if len(logged) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def decomposition_summary(run: Run) -> list[dict]:
    """Per observed response type, over every decomposed update and prompt: how well the first-order prediction
    matches the observed change, and how the SGD-kernel prediction splits into y⁺ and y⁻ contributions."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for row in run.decomposition:
        by_type[row["type"]].append(row)
    out = []
    for t in ordered_types(by_type):
        rows = by_type[t]
        obs, pred = np.array([r["observed"] for r in rows]), np.array([r["predicted"] for r in rows])
        pos = np.array([r.get("sgd_positive", 0.0) for r in rows])
        neg = np.array([r.get("sgd_negative", 0.0) for r in rows])
        corr = float(np.corrcoef(obs, pred)[0, 1]) if len(rows) > 1 and obs.std() > 0 and pred.std() > 0 else np.nan
        out.append(
            {
                "type": t,
                "n": len(rows),
                "corr": corr,
                "rel_error_median": float(np.median(np.abs(pred - obs) / np.maximum(np.abs(obs), 1e-12))),
                "observed_mean": obs.mean(),
                "predicted_mean": pred.mean(),
                "sgd_positive_mean": pos.mean(),
                "sgd_negative_mean": neg.mean(),
                "negative_share": float(np.abs(neg).sum() / max(np.abs(pos).sum() + np.abs(neg).sum(), 1e-300)),
                "observed_mass_argmax": np.mean([r["observed/mass_argmax"] for r in rows]),
                "observed_mass_tail": np.mean([r["observed/mass_tail"] for r in rows]),
                "lbk_mean": np.mean([r.get("observed/lbk", np.nan) for r in rows]),  # needs G: ldyn's trainer
                "sign_delta_mean": np.mean([r["observed/sign_delta"] for r in rows]),
            }
        )
    return out


def plot_decomposition(run: Run, summary: list[dict]) -> plt.Figure:
    types = [s["type"] for s in summary]
    cols = 4
    rows = math.ceil((len(types) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    readout = any(r.get("method") == "readout" for r in run.decomposition)  # its `predicted` is the SGD kernel's
    ylabel = "predicted (readout: −η·(ch1+ch2), SGD kernel; nats)" if readout else "predicted (A·K·G, real step; nats)"
    for ax, s in zip(axes.flat, summary):
        data = [r for r in run.decomposition if r["type"] == s["type"]]
        obs, pred = [r["observed"] for r in data], [r["predicted"] for r in data]
        ax.scatter(obs, pred, s=12, color=color(s["type"]), alpha=0.8)
        lo, hi = min(obs + pred), max(obs + pred)
        ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=0.8, linestyle="--")
        ax.set_title(
            f"{label(s['type'])}\nr = {s['corr']:.3f}, median rel. error {s['rel_error_median']:.2g}", fontsize=9
        )
        ax.set_xlabel("observed Δ log π (nats)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        plain_numbers(ax.xaxis)
        plain_numbers(ax.yaxis)
    ax = axes.flat[len(types)]
    if any("sgd_positive" in r for r in run.decomposition):
        _sgd_split(ax, types, summary, RL_SPLIT_NAMES if is_rl(run) else SPLIT_NAMES)
    else:  # observed inside another trainer: no G, so no y⁺/y⁻ split
        ax.axis("off")
        note = "no y⁺/y⁻ split:\nthe update batch was\nnot visible to the callback"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    for ax in axes.flat[len(types) + 1 :]:
        ax.axis("off")
    steps = sorted({r["step"] for r in run.decomposition})
    fig.suptitle(f"{run.label}: one-step decomposition at updates {steps} (each point: one prompt)")
    fig.tight_layout()
    return fig


SPLIT_NAMES = ("from y⁺ (positive gradient)", "from y⁻ (negative gradient)")
RL_SPLIT_NAMES = ("from A > 0 rollouts (pushed up)", "from A < 0 rollouts (pushed down)")


def _sgd_split(ax, types: list[str], summary: list[dict], names: tuple[str, str] = SPLIT_NAMES) -> None:
    """The SGD kernel's mean predicted Δ log π per type, from the y⁺ rows and from the y⁻ rows (`names`: the
    parts' legend entries)."""
    x = np.arange(len(types))
    heights = [s["sgd_positive_mean"] for s in summary] + [s["sgd_negative_mean"] for s in summary]
    factor, note = scaled(heights, "nats")
    ax.bar(x - 0.2, [s["sgd_positive_mean"] * factor for s in summary], 0.4, label=names[0])
    ax.bar(x + 0.2, [s["sgd_negative_mean"] * factor for s in summary], 0.4, label=names[1])
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xticks(x, [SYMBOLS.get(t, t) for t in types], rotation=60, fontsize=7)
    ax.set_title("SGD kernel −η·A·K·G: mean predicted Δ log π by part", fontsize=9)
    ax.set_ylabel(f"mean predicted Δ log π ({note})", fontsize=8)
    plain_numbers(ax.yaxis)
    low, high = min(0.0, *(h * factor for h in heights)), max(0.0, *(h * factor for h in heights))
    span = (high - low) or 1.0
    ax.set_ylim(low - 0.05 * span, high + 0.6 * span)  # a free band above the bars for the legend
    ax.legend(fontsize=7, loc="upper center", ncol=1, frameon=False)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every figure of a run from its files into its figures/ folder; returns the written paths."""
    run = load_records(run_dir)
    out = writable_folder(run.path / FIGURES)
    if not (run.probes or run.metrics or run.decomposition):
        raise LdynError("has nothing to draw yet (no probe, metrics or decomposition rows)", file=str(run.path))
    figures, written = {}, []
    tables = probe_table(run)
    if tables:
        with writing(out / "probe_summary.csv") as tmp:
            write_summary(tables, tmp)
        written.append(out / "probe_summary.csv")
        figures |= {
            "probe_groups": plot_groups(run, tables),
            "probe_spread": plot_spread(run, tables),
            "peakiness": plot_peakiness(run),
        }
    if run.metrics:
        figures["training"] = plot_training(run)
    summary = []
    if any("predicted" in row for row in run.decomposition):  # not with decompose.predict=false
        summary = decomposition_summary(run)
        written.append(save_rows(summary, out / "decomposition_summary.csv"))
        figures["decomposition"] = plot_decomposition(run, summary)
    if is_rl(run):
        written.append(save_rows(rl_summary_rows(run), out / "rl_summary.csv"))
        types = [s["type"] for s in summary]
        figures["rl"] = plot_rl(run, lambda ax, names: _sgd_split(ax, types, summary, names))
    for name, fig in figures.items():
        written.append(save_figure(fig, out / f"{name}.png"))
    return written
