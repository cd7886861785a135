"""Experiment trackers: TensorBoard, Weights & Biases and trackio, local and offline by default.

`open_trackers(["tensorboard"], run_dir, name, config)` returns one object with `log(scalars, step)`,
`image(name, path, step)`, `table(name, rows, columns, step)` and `close()` that writes to every tracker asked
for ("none" asks for none):

- tensorboard: event files under `<run_dir>/tensorboard` (`tensorboard --logdir runs/`);
- wandb: offline unless $WANDB_MODE says otherwise (files under `<run_dir>/wandb`; `wandb sync` uploads them); a
  run the host trainer already started (`wandb.run`) is logged to instead of a new one;
- trackio: its local database (trackio's default), project "ldyn".

What ldyn logs (`probe_scalars`): per response type the mean change of log π since step 0 (`probe/dlogp/<type>`),
the argmax response's (`probe/dlogp/argmax`), ‖A‖_F (`probe/a_norm/<type>`), and the trainer's metrics
(`train/<name>`); the run's figures as images at the end; and after each probe round a table `probe/responses`
(`probe_rows`: step, prompt id and text, response type and text, log π and its change since the first round) --
W&B: one table that grows by each round's rows (`log_mode="INCREMENTAL"`, else a new table each round); trackio:
a `trackio.Table` per round; TensorBoard: the round as a Markdown table in its Text tab.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ldyn.errors import LdynError

TRACKERS = ("none", "tensorboard", "wandb", "trackio")
PROBE_TABLE = "probe/responses"  # the table of every probed response, one round of rows per probe step
TABLE_COLUMNS = ["step", "example_id", "prompt", "type", "response", "logp", "dlogp"]
TEXT_CELL = 400  # characters of a text a TensorBoard Markdown cell keeps


class _TensorBoard:
    def __init__(self, run_dir: Path, name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, name: str, path: Path, step: int) -> None:
        import matplotlib.image as mpimg

        pixels = mpimg.imread(path)[..., :3]
        self.writer.add_image(name, pixels, step, dataformats="HWC")
        self.writer.flush()

    def table(self, name: str, rows: list[list], columns: list[str], step: int) -> None:
        self.writer.add_text(name, markdown_table(rows, columns), step)
        self.writer.flush()

    def alert(self, title: str, text: str) -> None:  # TensorBoard has no alerts: a text beside the curves
        self.writer.add_text("ldyn/alerts", f"**{title}**: {text}")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import wandb

        self.wandb, self.own, self.tables = wandb, wandb.run is None, {}
        if self.own:
            mode = os.environ.get("WANDB_MODE", "offline")
            wandb.init(project="ldyn", name=name, config=config, dir=str(run_dir), mode=mode)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.wandb.log({**scalars, "ldyn/step": step})

    def image(self, name: str, path: Path, step: int) -> None:
        self.wandb.log({name: self.wandb.Image(str(path)), "ldyn/step": step})

    def table(self, name: str, rows: list[list], columns: list[str], step: int) -> None:
        self.wandb.log({name: wandb_table(self.wandb, self.tables, name, rows, columns), "ldyn/step": step})

    def alert(self, title: str, text: str) -> None:
        self.wandb.alert(title=title, text=text)

    def close(self) -> None:
        if self.own:
            self.wandb.finish()


class _Trackio:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import trackio

        self.trackio = trackio
        trackio.init(project="ldyn", name=name, config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.trackio.log(scalars, step=step)

    def image(self, name: str, path: Path, step: int) -> None:
        self.trackio.log({name: self.trackio.Image(str(path))}, step=step)

    def table(self, name: str, rows: list[list], columns: list[str], step: int) -> None:
        self.trackio.log({name: self.trackio.Table(columns=columns, data=rows)}, step=step)

    def alert(self, title: str, text: str) -> None:
        self.trackio.alert(title=title, text=text)

    def close(self) -> None:
        self.trackio.finish()


KINDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}


class Trackers:
    """Every tracker asked for, behind one interface; with none, every call does nothing."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, scalars: dict[str, float], step: int) -> None:
        scalars = {k: float(v) for k, v in scalars.items() if np.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(scalars, step)

    def image(self, name: str, path: Path, step: int) -> None:
        for tracker in self.trackers:
            tracker.image(name, path, step)

    def table(self, name: str, rows: list[list], columns: list[str], step: int) -> None:
        """Rows (one list per row, in `columns`' order) of a table at `step`; no rows, nothing logged."""
        if rows:
            for tracker in self.trackers:
                tracker.table(name, rows, columns, step)

    def alert(self, title: str, text: str) -> None:
        """An alert (trackio, W&B; TensorBoard: a text); one that a tracker refuses (W&B offline) is a warning."""
        for tracker in self.trackers:
            try:
                tracker.alert(title, text)
            except Exception as e:  # an alert is a courtesy: it never stops training
                print(f"ldyn: warning: {type(tracker).__name__.strip('_')} took no alert ({e})", file=sys.stderr)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_trackers(kinds: list[str], run_dir: Path, name: str, config: dict | None = None) -> Trackers:
    """The trackers named in `kinds` ("none" and duplicates ignored); a missing package is one clear error."""
    opened = []
    for kind in dict.fromkeys(k for k in kinds if k != "none"):
        if kind not in KINDS:
            raise LdynError(f"unknown tracker '{kind}' (choices: {', '.join(TRACKERS)})", field="report_to")
        try:
            opened.append(KINDS[kind](Path(run_dir), name, config or {}))
        except ImportError:
            raise LdynError(f"report_to={kind} needs the {kind} package: pip install {kind}") from None
    return Trackers(opened)


def probe_scalars(records: list[dict], baseline: dict[str, float]) -> dict[str, float]:
    """Scalars of one probe round: per type the mean log π minus its mean at step 0 (`baseline`, filled from the
    first round it sees), and the mean ‖A‖_F."""
    by_type: dict[str, list[float]] = {}
    norms: dict[str, list[float]] = {}
    for r in records:
        by_type.setdefault(r["type"], []).append(r["logp_sum"])
        if "a_norm" in r:
            norms.setdefault(r["type"], []).append(r["a_norm"])
    out = {}
    for t, values in by_type.items():
        mean = float(np.mean(values))
        baseline.setdefault(t, mean)
        out[f"probe/dlogp/{t}"] = mean - baseline[t]
    out |= {f"probe/a_norm/{t}": float(np.mean(v)) for t, v in norms.items()}
    return out


def baseline_of(rows: list[dict]) -> dict[str, float]:
    """The step-0 means `probe_scalars` measures changes from, out of a run's probe rows (its first round): for a
    resumed run, whose first round was written by an earlier process."""
    first = min((r["step"] for r in rows), default=0)
    baseline: dict[str, float] = {}
    probe_scalars([r for r in rows if r["step"] == first], baseline)
    return baseline


def train_scalars(metrics: dict) -> dict[str, float]:
    """The numeric training metrics of one update, as `train/<name>`."""
    return {f"train/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}


def texts_of(rows: list[dict]) -> dict[tuple[str, str], str]:
    """probe_set.jsonl's rows (`runs.directory.PROBE_SET`) as {(example_id, type): text}; type "prompt": the prompt."""
    return {(r["example_id"], r["type"]): r["text"] for r in rows if "text" in r}


def first_logps(rows: list[dict]) -> dict[tuple[str, str], float]:
    """Each (example_id, type)'s log π in the run's first probe round, out of its probe rows: where a resumed run
    measures `probe_rows`' changes from."""
    first = min((r["step"] for r in rows), default=0)
    return {(r["example_id"], r["type"]): _logp(r) for r in rows if r["step"] == first}


def probe_rows(
    records: list[dict], step: int, texts: dict[tuple[str, str], str], first: dict[tuple[str, str], float]
) -> list[list]:
    """One probe round as `TABLE_COLUMNS` rows: the prompt's and response's texts from `texts` (`texts_of`; the
    prompt's id and "" where the run has none, e.g. the argmax, measured along chosen), log π and its change since
    `first` (each (prompt, type)'s first value, filled from the first round it sees)."""
    rows = []
    for r in records:
        key = (r["example_id"], r["type"])
        logp = _logp(r)
        start = first.setdefault(key, logp)
        prompt = texts.get((r["example_id"], "prompt"), r["example_id"])
        rows.append([step, r["example_id"], prompt, r["type"], texts.get(key, ""), logp, logp - start])
    return rows


def _logp(record: dict) -> float:
    return float("nan") if record["logp_sum"] is None else float(record["logp_sum"])  # null: not finite


def wandb_table(wandb, tables: dict, name: str, rows: list[list], columns: list[str]):
    """The W&B table to log for `rows`: one per name in `tables` that each log extends by the new rows only
    (`log_mode="INCREMENTAL"`), or, where the installed wandb has no such mode, a new table of these rows."""
    table = tables.get(name)
    if table is None or list(table.columns) != list(columns):
        try:
            table = tables[name] = wandb.Table(columns=columns, log_mode="INCREMENTAL")
        except TypeError:  # wandb before incremental tables
            return wandb.Table(columns=columns, data=rows)
    for row in rows:
        table.add_data(*row)
    return table


def markdown_table(rows: list[list], columns: list[str]) -> str:
    """Rows as a Markdown table (TensorBoard's Text tab): texts on one line, cut at `TEXT_CELL` characters."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        text = str(value).replace("|", "\\|").replace("\n", "<br>")
        return text if len(text) <= TEXT_CELL else text[: TEXT_CELL - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
