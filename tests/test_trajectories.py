"""paper/trajectories.py: where a curve peaks and how far it falls after, by hand, and in the claims report."""

import csv
import math

import numpy as np
from helpers import DPO, make_run, squeeze_dpo

from ldyn.paper.report import write_report
from ldyn.paper.trajectories import peak_of, summarise, trajectories


def test_peak_rise_fall_and_net_by_hand():
    steps, curve = np.array([0, 8, 16, 24]), np.array([-10.0, -7.0, -8.5, np.nan])
    p = peak_of(steps, curve, claims="11", stage="r/dpo", response="chosen", prompt="mean")
    assert (p.start, p.peak, p.peak_step, p.end, p.end_step) == (-10.0, -7.0, 8, -8.5, 16)  # the NaN probe skipped
    assert (p.rise, p.fall, p.net) == (3.0, 1.5, 1.5)
    rising = peak_of(np.array([0, 8, 16]), np.array([-10.0, -9.0, -8.0]), claims="", stage="", response="", prompt="")
    assert rising.peak_step == rising.end_step == 16 and rising.fall == 0.0
    assert peak_of(np.array([0, 8]), np.array([np.nan, -1.0]), claims="", stage="", response="", prompt="") is None


def test_each_prompt_and_the_mean_of_a_dpo_run(tmp_path):
    # chosen: prompt e rises 2/step to step 2, then falls (3 + e)/step; the mean peaks at step 2 as every prompt does
    curves = squeeze_dpo() | {"chosen": lambda s, e: -100 + (2 * s if s <= 2 else 4 - (3 + e) * (s - 2))}
    run = make_run(tmp_path / "dpo", [DPO], curves)
    peaks = [p for p in trajectories([run]) if p.response == "chosen"]
    assert [p.prompt for p in peaks] == ["mean", "0", "1", "2", "3"] and {p.claims for p in peaks} == {"11, 13"}
    mean, each = peaks[0], peaks[1:]
    assert (mean.start, mean.peak, mean.peak_step, mean.end_step) == (-100, -96, 2, 4)
    assert [q.fall for q in each] == [6.0, 8.0, 10.0, 12.0] and math.isclose(mean.fall, 9.0)
    (s,) = summarise(peaks)
    assert (s.prompts, s.peaked_before_end, s.median_peak_step, s.median_fall, s.ended_below_start) == (4, 1.0, 2, 9, 1)


def test_the_report_shows_the_table_and_writes_its_data(tmp_path):
    make_run(tmp_path / "suite" / "dpo", [DPO], squeeze_dpo())
    out = write_report([tmp_path / "suite"], tmp_path / "report.html")
    page = out.read_text()
    assert "<table id='trajectories'>" in page and "(step 2)" in page and "<table id='trajectory-prompts'>" in page
    rows = list(csv.DictReader((tmp_path / "trajectories.csv").open()))
    assert len(rows) == 5 and rows[0]["prompt"] == "mean" and float(rows[0]["fall"]) == 6.0  # -96 → -102
