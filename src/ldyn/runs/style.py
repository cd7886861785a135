"""What every figure shares: the matplotlib backend, one colour and label per response type, stage marks on a
step axis (whole-update ticks, plain numbers), and the CSV beside each figure."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from ldyn.data.probesets import GROUPS, SYMBOLS  # noqa: E402

PALETTES = {"chosen": "Blues", "rejected": "Oranges", "irrelevant": "Reds", "random": "Greys", "argmax": "Greens"}
GROUP_OF = {t: g for g, types in GROUPS.items() for t in types}


def label(t: str) -> str:
    return f"{SYMBOLS[t]} {t}" if t in SYMBOLS else t


# types of no paper group: an RL run's own rollouts and held-out samples, the arithmetic task's far miss
OTHER_COLORS = {"rollout_correct": "tab:olive", "rollout_incorrect": "tab:pink", "held_out_sample": "tab:purple",
                "rejected_far": "tab:brown"}  # fmt: skip


def color(t: str) -> str:
    group = GROUP_OF.get(t)
    if group is None:
        return OTHER_COLORS.get(t, "grey")
    members = GROUPS[group]
    return plt.get_cmap(PALETTES[group])(0.9 - 0.45 * members.index(t) / max(len(members) - 1, 1))


def ordered_types(tables) -> list[str]:
    known = [t for group in GROUPS.values() for t in group if t in tables]
    return known + sorted(t for t in tables if t not in known and t != "except_argmax")


def plain_numbers(axis) -> None:
    """Tick labels as plain numbers on one axis (`ax.xaxis` or `ax.yaxis`): no offset ("+7.05e-1") and no
    scientific factor ("1e-7") printed beside the axis. A log axis gets "0.1, 1, 10" and unlabelled minor ticks.
    Call it after `set_*scale`, which resets the formatters."""
    if axis.get_scale() == "log":
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
        return
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def step_axis(ax) -> None:
    """An axes whose x is the update: whole-update ticks only, and plain numbers on both axes."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    plain_numbers(ax.xaxis)
    plain_numbers(ax.yaxis)


def scaled(values, unit: str = "") -> tuple[float, str]:
    """A factor that brings tiny or huge `values` to plain tick numbers, and the axis label's note of it: (1e7,
    "×10⁻⁷") for changes of order 1e-7, (1, unit) when they read plainly already (largest |value| in [1e-3, 1e4))."""
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not finite.size or 1e-3 <= finite.max() < 1e4:
        return 1.0, unit
    power = int(np.floor(np.log10(finite.max())))
    digits = str(power).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return 10.0**-power, f"×10{digits}" + (f" {unit}" if unit else "")


def mark_stages(ax, spans) -> None:
    """A dashed line where each stage ends and the next begins, and each stage's name above its span; the axes is
    made a step axis (`step_axis`)."""
    step_axis(ax)
    for i, (start, end, name) in enumerate(spans):
        if i < len(spans) - 1:
            ax.axvline(end, color="0.5", linestyle="--", linewidth=1)
        if len(spans) > 1:
            ax.text(
                (start + end) / 2,
                0.98,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color="0.35",
                clip_on=True,
            )


def write_rows(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)
