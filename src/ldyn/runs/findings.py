"""What every rule of `ldyn diagnose` reads and returns: one stage's probe rows (`StageView`), a `Finding`, the
thresholds (`diagnose.py`'s docstring says what each means) and the small helpers the rules share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_NATS = 0.5
MIN_SHARE = 0.6
MIN_MASS = 0.05
MIN_A_NORM = 0.01
MIN_ENTROPY = 0.1

NOT_RESPONSES = ("argmax", "except_argmax")  # measured along chosen, not responses of their own
NOT_LANGUAGE = ("random_permute", "random_nonhum")  # shuffled tokens and random text: not natural language
COLUMNS = ("logp_sum", "logp_mean", "a_norm", "entropy", "topk_mass", "topk_entropy")


@dataclass
class Finding:
    key: str  # stable id: squeezing, displacement, hallucination, peakiness, over_optimisation
    stage: str
    title: str
    text: str  # one line, with its numbers and the share of prompts
    share: float | None  # the share of probed prompts showing it
    mechanism: str  # the paper's one-sentence mechanism
    levers: list[str] = field(default_factory=list)  # the known remedies
    values: dict = field(default_factory=dict)  # the numbers used


@dataclass
class StageView:
    """One stage's probe rows: its loss, its window of steps, and per-prompt changes over that window."""

    name: str
    loss: str  # "" when the run's config does not name the stage
    preference: bool  # the loss has a rejected (negative) term
    sft_on_chosen: bool  # an SFT-style loss trained on chosen (or on chosen ∪ rejected)
    start: int
    end: int
    tables: dict  # column -> probe_table(run, column)
    decomposition: list[dict] = field(default_factory=list)
    sampled: bool = False  # an RL stage: it trains on its own rollouts (`grpo`)
    metrics: list[dict] = field(default_factory=list)  # the stage's rows of metrics.jsonl, in order

    @property
    def label(self) -> str:
        return f"{self.loss.upper() or 'stage'} stage '{self.name}'"

    def window(self, t: str, key: str = "logp_sum") -> tuple[np.ndarray, list[str], np.ndarray] | None:
        """(steps, ids, values (S, E)) of type t within the stage; None when absent or probed fewer than twice."""
        if t not in self.tables[key]:
            return None
        steps, ids, values = self.tables[key][t]
        keep = (steps >= self.start) & (steps <= self.end)
        return (steps[keep], ids, values[keep]) if keep.sum() >= 2 else None

    def change(self, t: str, key: str = "logp_sum") -> dict[str, float]:
        """Per prompt, the last round's value minus the first's (prompts with a missing value left out)."""
        return {e: last - first for e, (first, last) in self.ends(t, key).items()}

    def ends(self, t: str, key: str = "logp_sum") -> dict[str, tuple[float, float]]:
        """Per prompt, (the first round's value, the last round's), where both are finite."""
        w = self.window(t, key)
        if w is None:
            return {}
        _, ids, values = w
        return {e: (float(a), float(b)) for e, a, b in zip(ids, values[0], values[-1]) if np.isfinite(a - b)}

    def others(self) -> list[str]:
        """The natural-language responses other than chosen and rejected, probed within the stage."""
        skip = ("chosen", "rejected", *NOT_RESPONSES, *NOT_LANGUAGE)
        return [t for t in self.tables["logp_sum"] if t not in skip and self.window(t) is not None]


def mean(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values())))


def share(d: dict[str, float], up: bool) -> float:
    """The share of prompts whose change has the sign asked for."""
    return float(np.mean([(v > 0) if up else (v < 0) for v in d.values()]))


def moved(d: dict[str, float], up: bool, size: float) -> bool:
    """The mean change is at least `size` the way asked and at least MIN_SHARE of the prompts moved that way."""
    return bool(d) and (mean(d) >= size if up else mean(d) <= -size) and share(d, up) >= MIN_SHARE


def of_prompts(hits: list[bool]) -> str:
    return f"{sum(hits)} of {len(hits)} prompts ({100 * sum(hits) / len(hits):.0f}%)"


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
