"""Figures and their CSV from a synthetic run directory (no model involved)."""

import csv
import json

import matplotlib.pyplot as plt
import pytest

from ldyn.runs.directory import load_run, probe_table, stage_spans
from ldyn.runs.figures import plot_groups, plot_run, plot_spread

TYPES = ["chosen", "rejected", "irr_train", "random_permute", "argmax", "except_argmax"]


@pytest.fixture
def synthetic_run(tmp_path):
    """Three prompts, probed at steps 0, 2, 4; 'sft' for steps 1-2 and 'dpo' for 3-4.
    chosen rises by 1 nat per step on every prompt; rejected falls on two prompts out of three."""
    (tmp_path / "config.yaml").write_text("name: synthetic\n")
    metrics = [
        {"step": s, "stage": "sft" if s <= 2 else "dpo", "loss": 1.0 / s, "grad_norm": 1.0, "logps/chosen": -10.0 + s}
        for s in range(1, 5)
    ]
    probes = []
    for step in (0, 2, 4):
        for e in range(3):
            for t in TYPES:
                value = {"chosen": -50 + step, "rejected": -40 - step * (e < 2) + step * (e == 2)}.get(t, -60 - step)
                probes.append(
                    {
                        "step": step,
                        "stage": "sft" if step <= 2 else "dpo",
                        "example_id": str(e),
                        "type": t,
                        "logp_sum": value,
                        "a_norm": 100 + step,
                        "n_tokens": 5,
                    }
                )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (tmp_path / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes) + '{"step": 6, "cut')
    return tmp_path


def test_stage_spans_come_from_the_metrics(synthetic_run):
    assert stage_spans(load_run(synthetic_run)) == [(0, 2, "sft"), (2, 4, "dpo")]


def test_group_figure_has_the_papers_panels(synthetic_run):
    run = load_run(synthetic_run)  # the cut-off last line of probes.jsonl is skipped
    fig = plot_groups(run, probe_table(run))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["chosen group", "rejected group", "irrelevant group", "random group", "argmax group", "margin"]
    assert len(fig.axes[0].get_lines()) >= 1 and fig.axes[0].get_legend() is not None
    plt.close(fig)


def test_spread_figure_has_one_panel_per_type_with_every_prompt(synthetic_run):
    run = load_run(synthetic_run)
    fig = plot_spread(run, probe_table(run))
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 5  # chosen, rejected, irr_train, random_permute, argmax (except_argmax is not a panel)
    assert titled[1].get_title().endswith("33% of prompts up")  # rejected rose on one prompt of three
    assert len(titled[0].get_lines()) >= 3 + 1  # three prompts and the mean
    plt.close(fig)


def test_plot_run_writes_figures_and_their_data(synthetic_run):
    written = {p.name for p in plot_run(synthetic_run)}
    assert written == {"probe_summary.csv", "probe_groups.png", "probe_spread.png", "peakiness.png", "training.png"}
    rows = list(csv.DictReader(open(synthetic_run / "figures" / "probe_summary.csv")))
    chosen_end = next(r for r in rows if r["type"] == "chosen" and r["step"] == "4")
    assert float(chosen_end["mean_change"]) == 4.0 and float(chosen_end["share_up"]) == 1.0
    rejected_end = next(r for r in rows if r["type"] == "rejected" and r["step"] == "4")
    assert float(rejected_end["mean_change"]) == pytest.approx(-4 / 3, abs=1e-4)
    assert float(rejected_end["share_up"]) == pytest.approx(1 / 3, abs=1e-4)
