"""The stages of finished runs, as the claims and the report see them: which runs can speak to a claim (the
predicates over each stage's `kind`) and what a stage's probe curves measure (`Stage`).

Changes are means over the probed prompts of the teacher-forced summed log-probability, from a stage's first probe
(the step it starts at) to its last.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ldyn.config import StageConfig
from ldyn.runs.directory import Run, probe_table, stage_spans

NOT_RESPONSES = ("argmax", "except_argmax")  # measured along chosen, not response types of their own


class Stage:
    """One stage of a run, with its probe tables restricted to the steps the stage spans."""

    def __init__(self, run: Run, name: str | None):
        """`name=None`: the whole run, from step 0 to its last update (with its first stage's config)."""
        stages = run.config.stages
        self.run, self.name = run, name or "all"
        self.config = next((s for s in stages if s.name == name), stages[0] if stages else StageConfig())
        spans = {n: (a, b) for a, b, n in stage_spans(run)}
        self.start, self.end = spans.get(name, (0, 0)) if name else (0, max((b for a, b in spans.values()), default=0))
        self.tables = {k: probe_table(run, k) for k in ("logp_sum", "a_norm")}

    @property
    def label(self) -> str:
        return f"{self.run.path.name}/{self.name}"

    def has(self, t: str, key: str = "logp_sum") -> bool:
        return len(self.steps(t, key)) >= 2

    def steps(self, t: str, key: str = "logp_sum") -> np.ndarray:
        if t not in self.tables[key]:
            return np.array([], dtype=int)
        steps = self.tables[key][t][0]
        return steps[(steps >= self.start) & (steps <= self.end)]

    def values(self, t: str, key: str = "logp_sum", until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps (S,), per-prompt values (S, E)) within the stage, up to step `until`."""
        steps, _, values = self.tables[key][t]
        keep = (steps >= self.start) & (steps <= (self.end if until is None else min(until, self.end)))
        return steps[keep], values[keep]

    def means(self, t: str, key: str = "logp_sum", until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        steps, values = self.values(t, key, until)
        return steps, np.nanmean(values, axis=1)

    def delta(self, t: str, key: str = "logp_sum", until: int | None = None, since: int | None = None) -> float:
        """Mean change over prompts from the stage start (or step `since`) to its end (or step `until`)."""
        steps, values = self.values(t, key, until)
        first = 0 if since is None else int(np.searchsorted(steps, since))
        return float(np.nanmean(values[-1] - values[first]))

    def share(self, t: str, up: bool, until: int | None = None) -> float:
        """Share of prompts whose log-prob went up (or down) from the stage start to its end."""
        _, values = self.values(t, until=until)
        d = values[-1] - values[0]
        d = d[~np.isnan(d)]
        return float(np.mean(d > 0 if up else d < 0))

    def types(self) -> list[str]:
        return [t for t in self.tables["logp_sum"] if t not in NOT_RESPONSES and self.has(t)]

    def others_delta(self, until: int | None = None, exclude=("chosen", "rejected")) -> float:
        """Mean over response types (other than `exclude`) of each type's mean change: "all other responses"."""
        return float(np.mean([self.delta(t, until=until) for t in self.types() if t not in exclude]))


def stages_where(runs: list[Run], test: Callable[[Run, int, StageConfig], bool], probed: bool = True) -> list[Stage]:
    """Every stage (of any run) that passes `test(run, index, stage config)` and has probe records."""
    found = []
    for run in runs:
        for i, s in enumerate(run.config.stages):
            if test(run, i, s):
                stage = Stage(run, s.name)
                if not probed or stage.has("chosen"):
                    found.append(stage)
    return found


def richest(stages: list[Stage]) -> Stage | None:
    """The stage probing the most response types (the sweep's side runs probe fewer); ties: the first."""
    return max(stages, key=lambda s: len(s.types()), default=None)


# ---------------------------------------------------------------- which stages a claim reads (StageConfig.kind)


def sft_on_chosen(run: Run, i: int, s: StageConfig) -> bool:
    return s.kind == "sft"


def extend_sft(run: Run, i: int, s: StageConfig) -> bool:
    return s.kind == "extend"


def off_policy_dpo(run: Run, i: int, s: StageConfig) -> bool:
    return s.kind == "dpo"


def dpo_from_base(run: Run, i: int, s: StageConfig) -> bool:
    return i == 0 and off_policy_dpo(run, i, s)


def dpo_after(kind: Callable) -> Callable:
    def test(run: Run, i: int, s: StageConfig) -> bool:
        return i == 1 and off_policy_dpo(run, i, s) and kind(run, 0, run.config.stages[0])

    return test


def on_policy_dpo(run: Run, i: int, s: StageConfig) -> bool:
    return i == 0 and s.kind == "dpo+onpolicy"


def ranked_dpo(run: Run, i: int, s: StageConfig) -> bool:
    return i == 0 and s.kind == "dpo+ranked"


def spin(run: Run, i: int, s: StageConfig) -> bool:
    return i == 0 and s.kind == "spin"
