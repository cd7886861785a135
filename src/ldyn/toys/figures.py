"""Figures of the two small worlds: the squeezing toy and the digits classifier."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BEFORE, AFTER, NEGATIVE, POSITIVE = "0.6", "tab:blue", "tab:red", "tab:green"


def squeeze_figure(cases) -> plt.Figure:
    """One row per case: π before (grey) and after (colour) against the label, linear then log scale; the
    negatively updated label marked red, the positively updated one green."""
    fig, axes = plt.subplots(len(cases), 2, figsize=(12, 2.4 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        labels = np.arange(len(case.before))
        for ax, log in zip(row, (False, True)):
            ax.plot(labels, case.before, color=BEFORE, lw=1, marker="." if len(labels) <= 100 else None, label="before")
            ax.plot(labels, case.after, color=AFTER, lw=1, marker="." if len(labels) <= 100 else None, label="after")
            for index, colour, name in ((case.minus, NEGATIVE, "ȳ (negative)"), (case.plus, POSITIVE, "y⁺ (positive)")):
                if index is not None:
                    ax.axvline(index, color=colour, ls="--", lw=0.8, label=name)
            if log:
                ax.set_yscale("log")
                ax.set_title(f"{case.name}: log scale", fontsize=9)
            else:
                ax.set_title(f"{case.title}   ({case.rising}/{len(labels)} labels rise)", fontsize=9)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel("π(y)")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("label")
    axes[-1, 1].set_xlabel("label")
    fig.suptitle(
        "One update of a linear softmax head: π before (grey) and after (blue); "
        "red dashes: the label pushed down, green: the label pushed up"
    )
    fig.tight_layout()
    return fig


def _heatmap(
    ax,
    matrix: np.ndarray,
    title: str,
    *,
    xlabel: str,
    ylabel: str,
    cmap: str,
    centred: bool,
    fmt: str | None = None,
    skip_diagonal: bool = False,
) -> None:
    """skip_diagonal: colour only the off-diagonal cells (their scale is the point); the diagonal shows its number
    on grey."""
    shown = matrix.astype(float).copy()
    if skip_diagonal:
        np.fill_diagonal(shown, np.nan)
    limit = np.nanmax(np.abs(shown)) or 1.0
    low = -limit if centred else np.nanmin(shown)
    colours = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
    image = ax.imshow(shown, cmap=colours, vmin=low, vmax=limit)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    ax.tick_params(labelsize=7)
    if fmt:
        for (i, j), v in np.ndenumerate(matrix):
            strong = abs(v) > 0.6 * limit if centred else v > low + 0.6 * (limit - low)
            dark = strong and not (skip_diagonal and i == j)
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=5.5, color="white" if dark else "black")
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def digits_figure(result) -> plt.Figure:
    """Four panels: average prediction per observed class, accumulated influence between classes, the normalised
    eNTK coupling between classes at the end, and the coupling of the strongest pairs over training."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 10.5))
    _heatmap(
        axes[0, 0],
        result.average_prediction,
        "average prediction on held-out images",
        xlabel="predicting class",
        ylabel="observing class",
        cmap="Blues",
        centred=False,
        fmt=".2f",
    )
    pull = result.influence_pull
    _heatmap(
        axes[0, 1],
        pull,
        "accumulated influence: Σ_t Δπ(y = learnt class | x_o), first order\n"
        "(row: class of the learnt examples, column: class of the held-out image; diagonal in grey)",
        xlabel="observed class",
        ylabel="learnt class",
        cmap="RdBu_r",
        centred=True,
        fmt=".3f",
        skip_diagonal=True,
    )
    _heatmap(
        axes[1, 0],
        result.coupling.mean(0),
        "eNTK coupling ‖K_ab‖_F / √(‖K_aa‖_F ‖K_bb‖_F), mean over training",
        xlabel="class b",
        ylabel="class a",
        cmap="viridis",
        centred=False,
        fmt=".2f",
        skip_diagonal=True,
    )
    _coupling_curves(axes[1, 1], result)
    fig.suptitle(
        f"Learning dynamics of a {result.model} on {result.data} "
        f"(test accuracy {result.accuracy:.1%}, {result.n_train} training images)"
    )
    fig.tight_layout()
    return fig


def _coupling_curves(ax, result) -> None:
    """The normalised eNTK coupling of every class pair over training; the strongest five in colour."""
    top = {pair for pair, _ in result.top_pairs("coupling", 5)}
    for a in range(10):
        for b in range(a + 1, 10):
            curve = result.coupling[:, a, b]
            if (a, b) in top:
                ax.plot(result.kernel_steps, curve, lw=1.8, label=f"{a}↔{b}")
            else:
                ax.plot(result.kernel_steps, curve, lw=0.5, color="0.8")
    ax.set_title("eNTK coupling between classes over training (strongest 5 in colour)", fontsize=9)
    ax.set_xlabel("update", fontsize=8)
    ax.set_ylabel("normalised ‖K‖_F", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)


def agreement_figure(predicted: np.ndarray, observed: np.ndarray, title: str) -> plt.Figure:
    """Predicted (first-order A·K·G) against observed Δ log π, one point per observed image and label."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(observed.ravel(), predicted.ravel(), s=3, alpha=0.4)
    low, high = min(observed.min(), predicted.min()), max(observed.max(), predicted.max())
    ax.plot([low, high], [low, high], color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("observed Δ log π")
    ax.set_ylabel("predicted −η A K G")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
