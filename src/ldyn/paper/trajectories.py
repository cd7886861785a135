"""Where the rise-then-fall curves peak, and how far they fall after the peak: how close a "does not hold" came.

The claims about a curve's shape over the horizon -- under SFT y_u⁻ rises first and then stalls (7) while the
irrelevant and non-language responses fall (8); under DPO from the base model y_u⁺ rises and then falls below its
start (11); from an SFT model it falls from the start (15) -- are verdicts on a stage's first and last probes. This
table shows the trajectory behind each, for the mean over the probed prompts and for every prompt: the probe where
the curve peaks, its rise to that peak, its fall from the peak to the stage's last probe, and its net change.
A curve still rising at the end has its peak at the last probe and a fall of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ldyn.paper.stages import Stage, dpo_after, dpo_from_base, extend_sft, richest, sft_on_chosen, stages_where
from ldyn.runs.directory import Run

WATCHED = (  # (the claims they serve, which stage, the response types whose shape they read)
    ("7, 8", sft_on_chosen, ("rejected", "irr_hum", "random_permute", "random_nonhum")),
    ("11, 13", dpo_from_base, ("chosen",)),
    ("15, 18", dpo_after(sft_on_chosen), ("chosen",)),
    ("18", dpo_after(extend_sft), ("chosen",)),
)


@dataclass(frozen=True)
class Peak:
    """One curve's shape within a stage: log-probs at its first probe, its highest probe and its last."""

    claims: str
    stage: str  # run/stage
    response: str  # response type
    prompt: str  # "mean" (over the probed prompts) or the prompt's example id
    start: float
    peak: float
    peak_step: int
    end: float
    end_step: int

    @property
    def rise(self) -> float:
        return self.peak - self.start

    @property
    def fall(self) -> float:
        """How far the curve came down from its peak by the stage's last probe (0: it peaks at the end)."""
        return self.peak - self.end

    @property
    def net(self) -> float:
        return self.end - self.start


def peak_of(steps: np.ndarray, curve: np.ndarray, **labels) -> Peak | None:
    """The Peak of one curve (probe steps, values; NaN probes skipped), or None with fewer than two probes."""
    ok = ~np.isnan(curve)
    steps, curve = steps[ok], curve[ok]
    if len(curve) < 2:
        return None
    i = int(np.argmax(curve))  # the first of equal maxima
    return Peak(
        **labels,
        start=float(curve[0]),
        peak=float(curve[i]),
        peak_step=int(steps[i]),
        end=float(curve[-1]),
        end_step=int(steps[-1]),
    )


def stage_peaks(stage: Stage, response: str, claims: str) -> list[Peak]:
    """The mean curve's Peak, then each prompt's."""
    steps, values = stage.values(response)
    ids = stage.tables["logp_sum"][response][1]
    labels = {"claims": claims, "stage": stage.label, "response": response}
    curves = [("mean", np.nanmean(values, axis=1))] + [(str(ids[j]), values[:, j]) for j in range(values.shape[1])]
    return [p for name, curve in curves if (p := peak_of(steps, curve, prompt=name, **labels)) is not None]


def trajectories(runs: list[Run]) -> list[Peak]:
    """Every watched curve these runs have: for each claim's stage (the richest one), each response type it reads."""
    out = []
    for claims, test, responses in WATCHED:
        stage = richest(stages_where(runs, test))
        for response in responses if stage is not None else ():
            if stage.has(response):
                out += stage_peaks(stage, response, claims)
    return out


@dataclass(frozen=True)
class Summary:
    """A curve's mean Peak with what its prompts did one by one."""

    mean: Peak
    prompts: int
    peaked_before_end: float  # share of prompts whose own peak is before the stage's last probe
    median_peak_step: float  # over prompts
    median_fall: float  # over prompts, from each prompt's own peak
    ended_below_start: float  # share of prompts


def summarise(peaks: list[Peak]) -> list[Summary]:
    """One Summary per (stage, response), in the order of `peaks`."""
    out = []
    for p in (p for p in peaks if p.prompt == "mean"):
        each = [q for q in peaks if q.prompt != "mean" and (q.stage, q.response) == (p.stage, p.response)]
        if not each:
            continue
        out.append(
            Summary(
                mean=p,
                prompts=len(each),
                peaked_before_end=float(np.mean([q.peak_step < q.end_step for q in each])),
                median_peak_step=float(np.median([q.peak_step for q in each])),
                median_fall=float(np.median([q.fall for q in each])),
                ended_below_start=float(np.mean([q.net < 0 for q in each])),
            )
        )
    return out


def csv_rows(peaks: list[Peak]) -> list[dict]:
    """The table's data, one row per curve (the mean's and every prompt's)."""
    return [vars(p) | {"rise": p.rise, "fall": p.fall, "net": p.net} for p in peaks]
