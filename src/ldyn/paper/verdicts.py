"""Verdicts: what a claim rule returns, and the registry the rules add themselves to (`@claim`).

A rule is `rule(runs, toys, winrates) -> (stages it read, our numbers as text, verdict)`, one of three verdicts:

- "holds"           every condition of the rule is met;
- "does not hold"   a condition fails (the measured numbers say which);
- "not measurable"  the runs lack what the claim needs (a run of that kind, a response type, a second learning rate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

HOLDS, FAILS, NA = "holds", "does not hold", "not measurable"
RANDOM_TYPES = ("random_permute", "random_nonhum")


@dataclass
class Verdict:
    id: str
    title: str
    paper: str  # the paper's statement, condensed from paper.md §7
    measured: str  # our numbers
    verdict: str  # HOLDS | FAILS | NA
    runs: tuple[str, ...] = ()


CLAIMS: list[tuple[str, str, str, Callable]] = []  # (id, title, the paper's statement, rule), in the paper's order


def claim(id_: str, title: str, paper: str):
    """Register a rule for one claim of paper.md §7."""

    def register(fn):
        CLAIMS.append((id_, title, paper, fn))
        return fn

    return register


def verdict(ok: bool) -> str:
    return HOLDS if ok else FAILS


def signed(x: float) -> str:
    """A change in nats as the rules print it: +1.2, −0.4."""
    return f"{x:+.1f}"
