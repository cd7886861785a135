"""The diagnosis as a run goes: after each probe round, the findings of `ldyn diagnose` that are new or changed.

ldyn's trainer (`train/callbacks.ProbeCallback`) and `LearningDynamicsCallback` both hold a `Watch` over their run
directory: `after_round(step)` re-reads the run, diagnoses it, prints each finding that is new or whose numbers
changed as one `ldyn: step N: ...` line, and returns them, so that the caller can send them on as alerts
(`probe.alerts`, `alerts=`: trackio's `alert`, W&B's `alert`) -- only then, so a tracker is not flooded unasked.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ldyn.runs.diagnose import Finding, changed_findings, diagnose
from ldyn.runs.directory import load_run


class Watch:
    def __init__(self, run_dir: str | Path):
        self.path, self.shown = Path(run_dir), []

    def after_round(self, step: int) -> list[Finding]:
        findings = diagnose(load_run(self.path))
        changed = changed_findings(self.shown, findings)
        self.shown = findings
        for f in changed:
            print(f"ldyn: step {step}: {f.title}: {f.text}", file=sys.stderr, flush=True)
        return changed


def alert_text(finding: Finding) -> str:
    """An alert's body: the finding's numbers, its mechanism and the first lever."""
    lever = f" Lever: {finding.levers[0]}." if finding.levers else ""
    return f"{finding.text}. Why: {finding.mechanism}{lever}"
