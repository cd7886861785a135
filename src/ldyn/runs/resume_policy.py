"""What `ldyn resume` lets change in a run's `config.yaml`.

A run keeps the config it was trained under: `checkpoints/config.yaml`, a frozen copy written when the run starts
(so a run killed before its first checkpoint, whose step-0 probe rows are kept, is covered too). `ldyn resume`
continues under `config.yaml` only if it differs from that copy in nothing that was trained or measured: the
model, the data and how it becomes tokens, every stage, the seed, the precision, the LoRA settings, the probe set
and what is probed, and what the decomposition computes. Only cadence, performance and reporting may change
(`MAY_CHANGE`). A run from before this copy existed has none, and resumes as it always did.
"""

from __future__ import annotations

from ldyn.config import RunConfig, read_config
from ldyn.errors import LdynError
from ldyn.runs.directory import CONFIG, TRAINED, RunDir
from ldyn.schema import flatten, to_dict

MAY_CHANGE = (
    "name",  # the run's label in figure titles and trackers
    "output_dir",  # resume takes the run's folder itself
    "compile",  # how the same training forward runs (performance)
    "cuda_graphs",
    "cuda_graphs_pad_to",
    "checkpoint_every",  # how often a resumable checkpoint is saved
    "report_to",  # where the curves are sent
    "probe.every",  # how often the same probes are measured
    "probe.batch_tokens",  # how many are measured per forward pass
    "probe.alerts",  # whether the findings are also sent as alerts
    "decompose.every",  # how often the same decomposition is taken
    "decompose.batch_tokens",
    "judge.timeout",  # how an endpoint is asked, not what it is asked
    "judge.retries",
    "judge.time_limit",
)
JUDGE = ("judge.kind", "judge.model")  # may change too, unless a stage ranks its samples with the judge (trained)


def may_change(trained: RunConfig) -> set[str]:
    """The keys of `trained` that a resume may change."""
    ranks = any(s.sample.responses == "both" and s.sample.rank == "judge" for s in trained.stages)
    return set(MAY_CHANGE) | (set() if ranks else set(JUDGE))


def first_difference(trained: RunConfig, now: RunConfig) -> tuple[str, object, object] | None:
    """(key, value there, value here) of the first key, in `ldyn config --keys` order, that differs between the
    two configs and may not change; None when they agree."""
    allowed = may_change(trained)
    there, here = to_dict(trained), to_dict(now)
    stages_there, stages_here = there.pop("stages"), here.pop("stages")
    flat_here = flatten(here)
    for key, value in flatten(there).items():
        if key not in allowed and value != flat_here.get(key):
            return key, value, flat_here.get(key)
    names = [s["name"] for s in stages_there], [s["name"] for s in stages_here]
    if len(names[0]) != len(names[1]):
        return "stages", *names
    for i, (a, b) in enumerate(zip(stages_there, stages_here)):
        if a["name"] != b["name"]:
            return f"stages.{i}.name", a["name"], b["name"]
        flat_b = flatten(b, f"stages.{b['name']}.")
        for key, value in flatten(a, f"stages.{a['name']}.").items():
            if value != flat_b.get(key):
                return key, value, flat_b.get(key)
    return None


def trained_config(run: RunDir) -> RunConfig | None:
    """The config `run` was trained under, or None for a run from before ldyn kept it."""
    frozen = run.path / TRAINED
    if not frozen.exists():
        return None
    if not frozen.is_file():
        raise LdynError("is not a file; start the run again with --overwrite", file=str(frozen))
    return read_config(frozen)


def check_unchanged(run: RunDir, trained: RunConfig | None, now: RunConfig) -> None:
    """Refuse to resume `run` under `now` (its config.yaml) if it differs from `trained`, the config the run was
    trained under, in anything but `may_change`: one line naming the first differing key."""
    difference = None if trained is None else first_difference(trained, now)
    if difference is None:
        return
    key, there, here = difference
    raise LdynError(
        f"differs from the run's checkpoint ({there!r} there, {here!r} here); resume with the original config or "
        "start a new run",
        file=str(run.path / CONFIG),
        field=key,
    )
