"""The paper's claims (`paper.md` §7) as verdict rules over run directories: `check_claims(runs) -> [Verdict]`.

Each rule finds the runs that can speak to its claim from their configs (an SFT stage on chosen, an off-policy DPO
stage from the base model, an extend stage, a sampling stage, decomposition records, a toy or win-rate result),
measures the claim's quantities from the files, and returns a verdict (`verdicts.py`). The rules live by topic:
`claims_sft.py` (1–9), `claims_dpo.py` (10–16), `claims_methods.py` (17–21).

Changes are means over the probed prompts of the teacher-forced summed log-probability, from a stage's first probe
(the step it starts at) to its last. The rules were fixed before looking at any result and are kept as written when
a claim fails at our scale: the point of the report is to say so.
"""

from __future__ import annotations

import json
from pathlib import Path

from ldyn.paper import claims_dpo, claims_methods, claims_sft  # noqa: F401 -- each registers its rules, in order
from ldyn.paper.stages import Stage
from ldyn.paper.verdicts import CLAIMS, FAILS, HOLDS, NA, Verdict
from ldyn.runs.directory import Run

__all__ = ["FAILS", "HOLDS", "NA", "Verdict", "check_claims", "read_toys"]


def read_toys(paths: list[Path]) -> dict:
    toys = {}
    for p in paths:
        if (p / "squeeze.json").is_file():
            toys["squeeze"] = json.loads((p / "squeeze.json").read_text())
    return toys


def check_claims(runs: list[Run], toys: dict | None = None, winrates: list[dict] | None = None) -> list[Verdict]:
    """Every claim's verdict on these runs (toys: {"squeeze": squeeze.json}; winrates: winrate.json rows)."""
    verdicts = []
    for id_, title, paper, rule in CLAIMS:
        stages, measured, verdict = rule(runs, toys or {}, winrates or [])
        if isinstance(stages, Stage):
            stages = (stages,)
        verdicts.append(Verdict(id_, title, paper, measured, verdict, tuple(s.label for s in stages or ())))
    return verdicts
