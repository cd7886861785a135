"""Experiment trackers: TensorBoard, Weights & Biases and trackio, local and offline by default.

`open_trackers(["tensorboard"], run_dir, name, config)` returns one object with `log(scalars, step)`,
`image(name, path, step)` and `close()` that writes to every tracker asked for ("none" asks for none):

- tensorboard: event files under `<run_dir>/tensorboard` (`tensorboard --logdir runs/`);
- wandb: offline unless $WANDB_MODE says otherwise (files under `<run_dir>/wandb`; `wandb sync` uploads them); a
  run the host trainer already started (`wandb.run`) is logged to instead of a new one;
- trackio: its local database (trackio's default), project "ldyn".

What ldyn logs (`probe_scalars`): per response type the mean change of log π since step 0 (`probe/dlogp/<type>`),
the argmax response's (`probe/dlogp/argmax`), ‖A‖_F (`probe/a_norm/<type>`), and the trainer's metrics
(`train/<name>`); the run's figures as images at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ldyn.errors import LdynError

TRACKERS = ("none", "tensorboard", "wandb", "trackio")


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

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import wandb

        self.wandb, self.own = wandb, wandb.run is None
        if self.own:
            mode = os.environ.get("WANDB_MODE", "offline")
            wandb.init(project="ldyn", name=name, config=config, dir=str(run_dir), mode=mode)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.wandb.log({**scalars, "ldyn/step": step})

    def image(self, name: str, path: Path, step: int) -> None:
        self.wandb.log({name: self.wandb.Image(str(path)), "ldyn/step": step})

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
