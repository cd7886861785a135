"""Figures across runs: the paper's accumulated-influence heatmap (`influence_figure`, the CLI's `ldyn
influence`) and runs' probe curves side by side (`compare_figure`, `ldyn compare`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ldyn.errors import LdynError
from ldyn.runs.directory import DECOMPOSITION, Run, probe_table, stage_spans
from ldyn.runs.export import NUMBER, load_records
from ldyn.runs.figures import FIGURE_SUFFIXES, save_figure, save_rows
from ldyn.runs.style import label, mark_stages, ordered_types, plt
from ldyn.runtime.files import check_rows, writable_file


def training_signal(run: Run, stage: str) -> str:
    """A column label for a stage: "SFT on irr_hum", "DPO (y⁺, y⁻)", "SFT on chosen ∪ rejected", ..."""
    cfg = next((s for s in run.config.stages if s.name == stage), None)
    return cfg.signal() if cfg is not None else stage


def influence_table(runs: list[Run]) -> tuple[list[str], list[str], np.ndarray]:
    """Accumulated influence: for each (run, stage) column and observed type, the sum over decomposed updates of
    the mean observed Δ log π(y | x_o). Returns (row types, column labels, values (rows, columns))."""
    columns: dict[str, dict[str, float]] = {}
    for run, name in zip(runs, run_labels(runs)):
        sums: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in run.decomposition:
            observed = row["observed"]  # null: a non-finite change, as strict JSON writes it
            sums[(row["stage"], row["type"])][row["step"]].append(np.nan if observed is None else observed)
        for (stage, t), by_step in sums.items():
            label_ = f"{training_signal(run, stage)}\n[{name}]"
            columns.setdefault(label_, {})[t] = float(sum(np.mean(v) for v in by_step.values()))
    types = ordered_types({t: None for col in columns.values() for t in col})
    values = np.array([[col.get(t, np.nan) for col in columns.values()] for t in types])
    return types, list(columns), values


def plot_influence(runs: list[Run]) -> tuple[plt.Figure, list[dict]]:
    """The paper's appendix heatmap: rows observed response types, columns training signals (one per run and
    stage); colour = accumulated influence normalised per column by its (max − min), as the authors' notebook does;
    the numbers are the raw sums in nats."""
    types, columns, values = influence_table(runs)
    span = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
    scaled = values / np.where(span > 0, span, 1)
    fig, ax = plt.subplots(figsize=(2.2 * len(columns) + 3, 0.55 * len(types) + 2))
    limit = np.nanmax(np.abs(scaled)) or 1
    image = ax.imshow(scaled, cmap="RdYlBu", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(types)):
        for j in range(len(columns)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:+.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(types)), [label(t) for t in types], fontsize=8)
    ax.set_title(
        "accumulated influence: Σ over decomposed updates of mean Δ log π(y | x_o) (nats)\n"
        "colour normalised per column by its max − min",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    rows = [
        {"type": t} | {c.replace("\n", " "): values[i, j] for j, c in enumerate(columns)} for i, t in enumerate(types)
    ]
    return fig, rows


def influence_figure(run_dirs: list[str | Path], out: str | Path) -> list[Path]:
    """Write the accumulated-influence heatmap of `run_dirs` to `out` (PNG) and its numbers beside it (CSV)."""
    out, table = figure_outputs(out)
    runs_with = [run for run in map(load_records, run_dirs) if run.decomposition]
    if not runs_with:
        raise LdynError("none of these runs has decomposition records (run with decompose.every > 0)")
    for run in runs_with:
        check_rows(run.path / DECOMPOSITION, run.decomposition, {"observed": NUMBER})
    fig, rows = plot_influence(runs_with)
    save_figure(fig, out, "--out")
    save_rows(rows, table, "--out")
    return [out, table]


def figure_outputs(out: str | Path) -> tuple[Path, Path]:
    """A figure's path and its CSV's beside it, both checked writable before anything is drawn."""
    out = writable_file(out, "--out", FIGURE_SUFFIXES)
    return out, writable_file(out.with_suffix(".csv"), "--out")


# ---------------------------------------------------------------- figures across runs (the report's)

COMPARED = {"chosen": ("chosen",), "rejected": ("rejected",), "argmax": ("argmax",)}  # and "others": the rest


def run_labels(runs: list[Run]) -> list[str]:
    """One distinct label per run: its config's name (`Run.label`: a callback's runs, all in folders named `ldyn`,
    are told apart by it); where names repeat (two runs of one recipe), the folder name, or as much of the path as
    tells them apart ("dpo/ldyn", "sft/ldyn"); the same folder given twice, numbered."""
    labels = [run.label for run in runs]
    if len(set(labels)) == len(labels):
        return labels
    parts = [run.path.resolve().parts for run in runs]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({i + 1})" for i, label in enumerate(labels)]


def compare_table(runs: list[Run]) -> list[dict]:
    """Per run, panel and probed step: the mean change of log π since step 0 (panels: chosen, rejected, argmax,
    and "others" = the mean over every other probed type, each type averaged over prompts first)."""
    rows, named = [], {t for types in COMPARED.values() for t in types} | {"except_argmax"}
    for run, name in zip(runs, run_labels(runs)):
        tables = probe_table(run)
        panels = dict(COMPARED) | {"others": tuple(t for t in tables if t not in named)}
        for panel, types in panels.items():
            present = [t for t in types if t in tables]
            if not present:
                continue
            steps = tables[present[0]][0]
            means = np.nanmean([np.nanmean(tables[t][2] - tables[t][2][0], axis=1) for t in present], axis=0)
            rows += [
                {"run": name, "panel": panel, "step": int(s), "mean_change": float(m)} for s, m in zip(steps, means)
            ]
    return rows


def compare_figure(run_dirs: list[str | Path], out: str | Path) -> list[Path]:
    """Runs side by side (`ldyn compare`): one panel each for chosen, rejected, the other probed types and the
    argmax, one line per run, the mean change of log π(y | x_u) since step 0; the numbers in a CSV beside it."""
    out, table = figure_outputs(out)
    runs = [load_records(d) for d in run_dirs]
    rows = compare_table(runs)
    if not rows:
        raise LdynError("none of these runs has probe records (run with probe.every > 0)")
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), sharex=True)
    titles = {
        "chosen": "y_u⁺ chosen",
        "rejected": "y_u⁻ rejected",
        "others": "every other probed type (mean)",
        "argmax": "y* argmax (teacher-forced along chosen)",
    }
    for ax, panel in zip(axes, ("chosen", "rejected", "others", "argmax")):
        for i, name in enumerate(run_labels(runs)):
            points = [(r["step"], r["mean_change"]) for r in rows if r["run"] == name and r["panel"] == panel]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, color=plt.get_cmap("tab10")(i), label=name)
        ax.axhline(0, color="0.8", linewidth=0.8)
        mark_stages(ax, stage_spans(runs[0]))
        ax.set_title(titles[panel], fontsize=10)
        ax.set_xlabel("update")
    axes[0].set_ylabel("mean Δ log π since step 0 (nats)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, "--out")
    save_rows(rows, table, "--out")
    return [out, table]
