"""What every figure shares: the matplotlib backend, one colour and label per response type, stage marks, and
the CSV beside each figure."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ldyn.data.probesets import GROUPS, SYMBOLS  # noqa: E402

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


def ordered_types(tables) -> list[str]:
    known = [t for group in GROUPS.values() for t in group if t in tables]
    return known + sorted(t for t in tables if t not in known and t != "except_argmax")


def mark_stages(ax, spans) -> None:
    """A dashed line where each stage ends and the next begins, and each stage's name above its span."""
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
