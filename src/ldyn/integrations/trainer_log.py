"""The host trainer's own log stream, which the callback's scalars, figures and tables join instead of opening a
tracker run of their own: `state.log_history`, the console line and the trackers of the trainer's `report_to`.

transformers builds a trainer's callbacks as its defaults, then the integrations' (TensorBoard, W&B, trackio, ...),
then the user's, so a user callback that adds keys to `logs` in its `on_log` is too late for every tracker; and
`Trainer.log` appends a copy to `log_history` before calling the callbacks. `log_to_trainer` does what
`Trainer.log` does with what it logs, for ldyn's scalars.
"""

from __future__ import annotations

import math
from pathlib import Path

from ldyn.integrations.host import warn
from ldyn.runs.directory import PROBES
from ldyn.runs.trackers import PROBE_TABLE, TABLE_COLUMNS, first_logps, markdown_table, texts_of, wandb_table
from ldyn.runs.trackers import probe_rows as table_rows
from ldyn.runs.watch import Watch, alert_text

_WANDB_TABLES: dict[str, dict] = {}  # per W&B run id: its incremental tables by name (`trackers.wandb_table`)


def log_to_trainer(handler, args, state, control, scalars: dict[str, float]) -> None:
    """`scalars` at the trainer's `global_step`, as `Trainer.log` hands on what it logs: a row of
    `state.log_history`, then every callback's `on_log` through the trainer's `CallbackHandler` (None: the history
    only) -- the trainer's TensorBoard, W&B or trackio callback (into its run), the console's. Not `trainer.log`
    itself: a subclass's (TRL's) adds and clears its own pending metrics there. `control.should_log`, which
    `on_log` clears, is kept for the trainer's own log of this step; a tracker's failure is one warning line."""
    scalars = {k: float(v) for k, v in scalars.items() if math.isfinite(v)}
    if not scalars or not state.is_world_process_zero:
        return
    logs = ({"epoch": state.epoch} if state.epoch is not None else {}) | scalars
    state.log_history.append({**logs, "step": state.global_step})
    if handler is None:
        return
    should_log = control.should_log
    try:
        handler.on_log(args, state, control, logs)
    except Exception as error:  # a tracker's failure never stops the training ldyn watches
        warn(f"the trainer's loggers did not take ldyn's scalars at step {state.global_step}: {error}")
    finally:
        control.should_log = should_log


def decomposition_scalars(rows: list[dict]) -> dict[str, float]:
    """One update's decomposition rows in brief: per response type the mean observed Δ log π and, with
    predictions, the mean first-order prediction (`ldyn/observed/<type>`, `ldyn/predicted/<type>`)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for key in ("observed", "predicted"):
            if isinstance(row.get(key), (int, float)):
                values.setdefault(f"ldyn/{key}/{row['type']}", []).append(float(row[key]))
    return {k: sum(v) / len(v) for k, v in values.items()}


def send_images(callback, images: dict[str, Path], step: int) -> None:
    """PNGs into the run of a trainer's tracker callback, where it takes images: TensorBoard's writer, the W&B run,
    the trackio run (each at the trainer's global step); any other callback is left alone."""
    from transformers.integrations import TensorBoardCallback, TrackioCallback, WandbCallback

    if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
        import matplotlib.image as mpimg

        for name, path in images.items():
            callback.tb_writer.add_image(name, mpimg.imread(path)[..., :3], step, dataformats="HWC")
        callback.tb_writer.flush()
    elif isinstance(callback, WandbCallback) and getattr(callback, "_initialized", False):
        import wandb

        if wandb.run is not None:
            wandb.run.log({name: wandb.Image(str(path)) for name, path in images.items()} | {"train/global_step": step})
    elif isinstance(callback, TrackioCallback) and getattr(callback, "_initialized", False):
        import trackio

        trackio.log({name: trackio.Image(str(path)) for name, path in images.items()} | {"train/global_step": step})


def send_table(callback, name: str, rows: list[list], columns: list[str], step: int) -> None:
    """A table's rows (`trackers.probe_rows`) into the run of a trainer's tracker callback: the W&B run's
    incremental table of that name (`trackers.wandb_table`), a `trackio.Table` in the trackio run, TensorBoard's
    Text tab (a Markdown table); any other callback is left alone."""
    from transformers.integrations import TensorBoardCallback, TrackioCallback, WandbCallback

    if not rows:
        return
    if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
        callback.tb_writer.add_text(name, markdown_table(rows, columns), step)
        callback.tb_writer.flush()
    elif isinstance(callback, WandbCallback) and getattr(callback, "_initialized", False):
        import wandb

        if wandb.run is not None:
            tables = _WANDB_TABLES.setdefault(wandb.run.id, {})
            wandb.run.log({name: wandb_table(wandb, tables, name, rows, columns), "train/global_step": step})
    elif isinstance(callback, TrackioCallback) and getattr(callback, "_initialized", False):
        import trackio

        trackio.log({name: trackio.Table(columns=columns, data=rows), "train/global_step": step})


def tables_to_trainer(handler, name: str, rows: list[list], columns: list[str], step: int) -> None:
    """`send_table` to every callback of a trainer's `CallbackHandler` (None: nothing); a tracker's failure is one
    warning line."""
    for callback in handler.callbacks if handler is not None else []:
        try:
            send_table(callback, name, rows, columns, step)
        except Exception as error:  # a tracker's failure never stops the training ldyn watches
            warn(f"ldyn's table {name} did not reach {type(callback).__name__} at step {step}: {error}")


def send_alert(callback, title: str, text: str) -> None:
    """An alert in the run of a trainer's tracker callback that takes alerts: the W&B run, the trackio run."""
    from transformers.integrations import TrackioCallback, WandbCallback

    if isinstance(callback, WandbCallback) and getattr(callback, "_initialized", False):
        import wandb

        if wandb.run is not None:
            wandb.run.alert(title=title, text=text)
    elif isinstance(callback, TrackioCallback) and getattr(callback, "_initialized", False):
        import trackio

        trackio.alert(title=title, text=text)


class RoundReport:
    """What the callback sends on after each probe round: its rows of the `probe/responses` table to the trainer's
    trackers, and the diagnosis's new or changed findings (`runs/watch.py`), printed, and as alerts with `alerts`."""

    def __init__(self, run, texts: list[dict], alerts: bool):
        self.run, self.texts, self.alerts = run, texts_of(texts), alerts
        self.watch, self.first = Watch(run.path), {}

    def after_round(self, handler, records: list[dict], step: int) -> None:
        if not self.first and step > 0:  # resumed: Δ log π from the first round
            self.first = first_logps(self.run.read(PROBES))
        rows = table_rows(records, step, self.texts, self.first)
        tables_to_trainer(handler, PROBE_TABLE, rows, TABLE_COLUMNS, step)
        for finding in self.watch.after_round(step):
            for callback in handler.callbacks if self.alerts and handler is not None else []:
                try:
                    send_alert(callback, finding.title, alert_text(finding))
                except Exception as error:  # an alert is a courtesy: it never stops the training
                    warn(f"ldyn's alert did not reach {type(callback).__name__} at step {step}: {error}")
