"""The run directory: every file a run writes, and the only code that reads them back.

    runs/<name>/
      config.yaml       the fully resolved config (plus ldyn version), written before training starts
      data.json         what was loaded: counts of pairs, probe prompts and types, truncated rows
      metrics.jsonl     one row per update: step, stage, loss, log-probs, rewards, margin, grad norm, lr, examples/s,
                        and the ids of the examples trained on (a sampled pair's id is `<id>@<step>`)
      probes.jsonl      long format, one row per (step, example, response type): logp_sum, logp_mean, n_tokens, ...
      probe_times.jsonl seconds per probe round
      decomposition.jsonl   per decomposed update and (example, response type): observed and predicted Δ log π
      decomposition_times.jsonl   seconds per decomposition, against the update it decomposes
      probe_set.jsonl   the probed texts, written once when the run starts: one row per (example_id, type) with its
                        `text` (type "prompt": the prompt; a conversation as its turns' "role: content" lines)
      samples.jsonl     stages with on-policy sampling: every sampled response (step, example, role, text, reward)
      figures/          PNGs and the CSV data behind each (`ldyn plot RUN_DIR` redraws them from the files alone)
      checkpoints/      `last-<step>/` (resumable), `<stage>/` (the model at each stage's end, a HF checkpoint dir),
                        state.json (where to resume from) and config.yaml (the config the run was trained under,
                        frozen when it starts: what `ldyn resume` compares config.yaml with, `runs/resume_policy.py`)

JSONL rows are appended and flushed one update or probe round at a time, so a killed run keeps everything it had
written; a line cut off by the kill is skipped when reading. `append_rows` and `read_rows` are the only code that
writes and reads JSONL results back (run directories, suite logs, win-rate caches); `load_run` gives a run with its
typed `RunConfig`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldyn.config import RunConfig, read_config
from ldyn.errors import LdynError
from ldyn.runtime.files import append_rows, read_rows, strict, write_atomically

CONFIG, DATA, METRICS, PROBES = "config.yaml", "data.json", "metrics.jsonl", "probes.jsonl"
PROBE_TIMES = "probe_times.jsonl"
DECOMPOSITION, DECOMPOSITION_TIMES = "decomposition.jsonl", "decomposition_times.jsonl"
SAMPLES = "samples.jsonl"
PROBE_SET = "probe_set.jsonl"  # the probed texts, once: one row per (example_id, type), type "prompt" for the prompt
SUITE_LOG = "suite.jsonl"  # a suite folder's record of each run's wall time
TRAINER_ARGS = "trainer_args.json"  # a run written by LearningDynamicsCallback: its host trainer's arguments
ROW_FILES = (METRICS, PROBES, PROBE_TIMES, DECOMPOSITION, DECOMPOSITION_TIMES, SAMPLES)  # one row per step each
FIGURES, CHECKPOINTS = "figures", "checkpoints"
STATE = "state.json"  # checkpoints/state.json: where to resume from (written by the Checkpointer)
TRAINED = f"{CHECKPOINTS}/{CONFIG}"  # the config the run was trained under, written when it starts


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None

    def lock(self) -> RunDir:
        """Hold the run's exclusive lock until this process exits (or `unlock`): a second writer -- run, resume,
        --overwrite, a callback -- is refused with one line. The lock file sits beside the run directory (so that
        --overwrite can delete the directory while holding it); the OS releases the lock when the process dies."""
        if self._lock is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path.parent / f".{self.path.name}.lock", "a+")  # noqa: SIM115 -- held for the run's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LdynError(
                f"another ldyn process ({holder}) is writing this run; wait for it to finish or choose "
                "another output_dir",
                file=str(self.path),
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock = handle
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def is_run(self) -> bool:
        """Whether the folder is an ldyn run directory (it has a config.yaml), so that it may be replaced."""
        return self.exists()

    @property
    def figures(self) -> Path:
        return self.path / FIGURES

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    def write_text(self, name: str, text: str) -> None:
        """Write a whole file atomically (a temporary file, then rename)."""
        write_atomically(self.path / name, text)

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def append(self, name: str, rows: list[dict]) -> None:
        append_rows(self.path / name, rows)

    def read(self, name: str) -> list[dict]:
        return read_rows(self.path / name)

    def rewrite(self, name: str, rows: list[dict]) -> None:
        """Replace a JSONL file's rows (atomically)."""
        self.write_text(name, "".join(json.dumps(strict(r)) + "\n" for r in rows))

    def keep_until(self, name: str, step: int) -> None:
        """Drop rows written after `step` (resuming from a checkpoint taken at `step`)."""
        self.rewrite(name, [r for r in self.read(name) if r["step"] <= step])

    def rewind(self, step: int) -> None:
        """Back to a checkpoint taken at `step`: every row file cut after it, and a probe round cut short by a kill
        dropped so that it is taken again."""
        for name in ROW_FILES:
            if (self.path / name).is_file():
                self.keep_until(name, step)
        self.drop_unfinished_probe_rounds()

    def append_probe_round(self, step: int, stage: str, records: list[dict], seconds: float, items: int) -> None:
        """One probe round: its rows, then its time, the last write, which marks the round finished."""
        self.append(PROBES, [{"step": step, "stage": stage, **r} for r in records])
        self.append(PROBE_TIMES, [{"step": step, "seconds": round(seconds, 3), "items": items}])

    def probed_steps(self) -> set[int]:
        """The steps whose probe round finished: its rows are in probes.jsonl and then its time in
        probe_times.jsonl, the round's last write."""
        return {row["step"] for row in self.read(PROBE_TIMES)}

    def drop_unfinished_probe_rounds(self) -> None:
        """Remove the rows of a probe round cut short by a kill, so that the round is taken again."""
        done = self.probed_steps()
        rows = self.read(PROBES)
        if any(r["step"] not in done for r in rows):
            self.rewrite(PROBES, [r for r in rows if r["step"] in done])


def read_resume_state(run: RunDir, weights: bool = True) -> dict | None:
    """The last checkpoint's resume state (step, stage index, model and optimizer files), or None when the run
    has none yet. A state that is not what the Checkpointer writes -- not JSON, fields of the wrong type, a folder
    or optimizer file that is not there -- is one line naming the file and field. `weights=False` reads the
    state alone, for asking whether a run finished once its weights were deleted to save disk."""
    path = run.checkpoints / STATE
    if run.checkpoints.exists() and not run.checkpoints.is_dir():
        raise LdynError(f"is not a folder, so the run cannot be resumed; {RESTART}", file=str(run.checkpoints))
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LdynError(f"cannot read the resume state ({e}); {RESTART}", file=str(path)) from None
    if not isinstance(state, dict):
        raise LdynError(f"must be a JSON object, got {type(state).__name__}; {RESTART}", file=str(path))
    for key, (kind, described) in STATE_FIELDS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            what = "missing" if key not in state else f"must be {described}, got {value!r}"
            raise LdynError(f"{what}; {RESTART}", file=str(path), field=key)
    state["model_dir"] = run.checkpoints / state["model"]
    if not weights:
        return state
    if not state["model"] or not state["model_dir"].is_dir():
        what = f"names the folder {state['model_dir']}, which is not there"
        raise LdynError(f"{what}; {RESTART}", file=str(path), field="model")
    if state["optimizer"] is not None and not (state["model_dir"] / state["optimizer"]).is_file():
        where = state["model_dir"] / state["optimizer"]
        raise LdynError(f"names the file {where}, which does not exist; {RESTART}", file=str(path), field="optimizer")
    return state


def finished(run: RunDir, cfg: RunConfig) -> bool:
    """Whether `run` trained every stage of `cfg`; a finished run whose checkpoint weights were deleted (to save
    disk, or packed without them) is still finished."""
    state = read_resume_state(run, weights=False) if run.exists() else None
    return state is not None and state["stage_index"] >= len(cfg.stages)


RESTART = "start the run again with --overwrite"
STATE_FIELDS = {  # what the Checkpointer writes: key -> (type, in words)
    "step": (int, "a whole number >= 0"),
    "model": (str, "a checkpoint folder's name"),
    "optimizer": ((str, type(None)), "a file name or null"),
    "stage_index": (int, "a whole number >= 0"),
    "stage_step": (int, "a whole number >= 0"),
}


@dataclass
class Run:
    path: Path
    config: RunConfig
    metrics: list[dict]
    probes: list[dict]
    decomposition: list[dict]
    texts: dict[tuple[str, str], str] = field(default_factory=dict)  # (example_id, type) -> text; "prompt" type too

    @property
    def label(self) -> str:
        """The run's name for figure titles: its config's name, else its folder's."""
        name = self.config.name
        return name if name and name != "???" else self.path.name


def load_run(path: str | Path) -> Run:
    """Read a run directory (for plots and reports); fails with a clear error if it is not one."""
    run = RunDir(path)
    if not run.exists():
        raise LdynError(f"not a run directory (no {CONFIG})", file=str(path))
    texts = {(str(r["example_id"]), r["type"]): r["text"] for r in run.read(PROBE_SET)}  # absent: an older run
    return Run(
        run.path, read_config(run.path / CONFIG), run.read(METRICS), run.read(PROBES), run.read(DECOMPOSITION), texts
    )


def probe_table(run: Run, key: str = "logp_sum") -> dict[str, tuple[np.ndarray, list[str], np.ndarray]]:
    """type -> (steps (S,), example ids (E,), values (S, E)); NaN where a value is missing."""
    cells: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for row in run.probes:
        if key in row:  # null (a non-finite value, written as strict JSON) reads as NaN
            cells[row["type"]][row["step"]][row["example_id"]] = np.nan if row[key] is None else row[key]
    tables = {}
    for t, by_step in cells.items():
        steps = sorted(by_step)
        ids = sorted({e for values in by_step.values() for e in values})
        values = np.array([[by_step[s].get(e, np.nan) for e in ids] for s in steps], dtype=float)
        tables[t] = (np.array(steps), ids, values)
    return tables


def stage_spans(run: Run) -> list[tuple[int, int, str]]:
    """(first step, last step, name) of each stage, in order, from the metrics (or probe) rows."""
    last: dict[str, int] = {}
    for row in run.metrics or run.probes:
        last[row["stage"]] = max(last.get(row["stage"], 0), row["step"])
    spans, start = [], 0
    for name, end in sorted(last.items(), key=lambda kv: kv[1]):
        spans.append((start, end, name))
        start = end
    return spans
