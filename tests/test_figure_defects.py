"""The figures' readability, read off the matplotlib objects after drawing: axis labels, prompt ids, plain tick
labels (no offset or scientific factor beside an axis), whole-update ticks, and a bar legend clear of its bars."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from ldyn.runs.directory import load_run, probe_table
from ldyn.runs.figures import decomposition_summary, plot_decomposition, plot_peakiness, plot_spread, plot_training
from ldyn.runs.style import scaled

TYPES = ["chosen", "rejected", "irr_train", "random_permute", "argmax", "except_argmax"]
PROMPTS = ["hh-001", "hh-002", "hh-003"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run(tmp_path):
    """Five DPO updates whose losses sit within 0.700-0.709 (what drew "7.05×10⁻¹"), probes every update whose
    ‖A‖_F moves by 1e-7 (what drew an unlabelled "1e-7"), and decomposition rows with y⁺/y⁻ parts."""
    (tmp_path / "config.yaml").write_text("name: defects\n")
    write(
        tmp_path / "metrics.jsonl",
        [{"step": s, "stage": "dpo", "loss": 0.709 - 0.002 * s, "grad_norm": 1.0 + s} for s in range(1, 6)],
    )
    probes = [
        {
            "step": s,
            "stage": "dpo",
            "example_id": e,
            "type": t,
            "logp_sum": -50.0 + s * (i + 1) * 0.1,
            "a_norm": 16.0 + 1e-7 * s * (i + 1),
            "n_tokens": 5,
        }
        for s in range(6)
        for i, e in enumerate(PROMPTS)
        for t in TYPES
    ]
    write(tmp_path / "probes.jsonl", probes)
    decomposition = [
        {
            "step": s,
            "stage": "dpo",
            "example_id": e,
            "type": t,
            "observed": 0.1 * s + 0.01 * i,
            "predicted": 0.1 * s + 0.011 * i,
            "sgd_positive": 0.2 + 0.01 * i,
            "sgd_negative": -0.02,
            "observed/mass_argmax": 0.0,
            "observed/mass_tail": 0.0,
            "observed/sign_delta": 0.0,
        }
        for s in (1, 3)
        for i, e in enumerate(PROMPTS)
        for t in TYPES[:5]
    ]
    write(tmp_path / "decomposition.jsonl", decomposition)
    return load_run(tmp_path)


def drawn(fig):
    fig.canvas.draw()
    return [ax for ax in fig.axes if ax.axison]


def assert_plain(ax):
    """No offset or factor text beside either axis, and no scientific notation in the tick labels."""
    for axis in (ax.xaxis, ax.yaxis):
        assert axis.get_offset_text().get_text() == "", ax.get_title()
        formatter = axis.get_major_formatter()
        if hasattr(formatter, "get_useOffset"):
            assert formatter.get_useOffset() is False
        for text in axis.get_ticklabels(which="both"):
            assert not any(mark in text.get_text() for mark in ("×10", "e-", "e+", "10^")), text.get_text()


def assert_whole_updates(ax):
    low, high = ax.get_xlim()
    ticks = [v for v in ax.get_xticks() if low <= v <= high]
    assert len(ticks) >= 2, ax.get_title()
    assert all(v == round(v) for v in ticks), ticks
    labels = [t.get_text().replace("−", "-") for t in ax.xaxis.get_ticklabels() if t.get_text()]
    assert all(float(v) == int(float(v)) for v in labels), labels


def test_spread_panels_have_axis_labels_and_the_prompts_are_named(run):
    fig = plot_spread(run, probe_table(run))
    panels = drawn(fig)
    assert len(panels) == 5
    assert all("log π" in ax.get_ylabel() for ax in panels)
    assert all(ax.get_xlabel() == "update" for ax in panels[-4:])  # the lowest panel of each column
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [*PROMPTS, "mean"]
    colors = {ln.get_label(): ln.get_color() for ln in panels[0].get_lines() if ln.get_label() in PROMPTS}
    again = {ln.get_label(): ln.get_color() for ln in panels[3].get_lines() if ln.get_label() in PROMPTS}
    assert colors == again and len(set(map(str, colors.values()))) == 3  # one colour per prompt in every panel
    for ax in panels:
        assert_plain(ax)
        assert_whole_updates(ax)
    plt.close(fig)


def test_training_losses_read_as_plain_numbers_on_whole_updates(run):
    fig = plot_training(run)
    panels = drawn(fig)
    loss = panels[0]
    assert loss.get_yscale() == "linear"  # 0.70-0.71 spans no decade: no log axis
    assert loss.get_ylabel()
    for ax in panels:
        assert_plain(ax)
        if ax.get_lines():
            assert_whole_updates(ax)
            assert ax.get_xlabel() == "update" and ax.get_ylabel()
    plt.close(fig)


def test_a_loss_spanning_decades_keeps_its_log_axis_with_plain_labels(run, tmp_path):
    write(
        tmp_path / "metrics.jsonl",
        [{"step": s, "stage": "sft" if s < 3 else "dpo", "loss": 800.0 if s < 3 else 0.69} for s in range(1, 6)],
    )
    fig = plot_training(load_run(tmp_path))
    loss = drawn(fig)[0]
    assert loss.get_yscale() == "log"
    labels = [t.get_text() for t in loss.yaxis.get_ticklabels() if t.get_text()]
    assert "1" in labels and "100" in labels
    assert_plain(loss)
    plt.close(fig)


def test_peakiness_has_no_offset_and_says_its_scale(run):
    fig = plot_peakiness(run)
    a_norm, logp = drawn(fig)
    assert "×10⁻⁷" in a_norm.get_ylabel() and "‖A‖_F" in a_norm.get_ylabel()
    assert "nats" in logp.get_ylabel()
    for ax in (a_norm, logp):
        assert_plain(ax)
        assert_whole_updates(ax)
    plt.close(fig)


def test_the_sgd_split_legend_leaves_the_bars_visible(run):
    fig = plot_decomposition(run, decomposition_summary(run))
    fig.canvas.draw()
    split = next(ax for ax in fig.axes if ax.get_legend() is not None and ax.patches)
    box = split.get_legend().get_window_extent()
    bars = [p.get_window_extent() for p in split.patches]
    assert bars and not any(box.overlaps(b) for b in bars)
    assert split.get_ylabel() and "nats" in split.get_ylabel()
    for ax in drawn(fig):
        assert_plain(ax)
    plt.close(fig)


def test_scaled_names_the_factor_it_applies():
    assert scaled([1e-7, -3e-7]) == (pytest.approx(1e7), "×10⁻⁷")
    assert scaled([0.5, 2.0], "nats") == (1.0, "nats")
    assert scaled([2e5], "nats") == (pytest.approx(1e-5), "×10⁵ nats")
    assert scaled([np.nan, 0.0]) == (1.0, "")


def test_the_spread_legend_names_twenty_prompts_and_counts_held_out_samples(tmp_path):
    """25 probed prompts and 12 held-out samples (an RL run's `held_out_sample` rows): the legend names 20 prompts,
    counts the other 5, and gives the samples one entry, so it fits beside the panels."""
    (tmp_path / "config.yaml").write_text("name: many\n")
    rows = [{"step": s, "stage": "grpo", "example_id": f"p{i:02d}", "type": "chosen", "logp_sum": -5.0 - s * i}
            for s in (0, 1) for i in range(25)]  # fmt: skip
    rows += [{"step": s, "stage": "grpo", "example_id": f"held_out/q#{k}", "type": "held_out_sample",
              "logp_sum": -9.0 - s * k} for s in (0, 1) for k in range(12)]  # fmt: skip
    write(tmp_path / "probes.jsonl", rows)
    run = load_run(tmp_path)
    fig = plot_spread(run, probe_table(run))
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names == [f"p{i:02d}" for i in range(20)] + ["… and 5 more", "held-out samples (12)", "mean"]
    plt.close(fig)
