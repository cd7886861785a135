"""`ldyn export RUN_DIR --format parquet|csv`: a run's probe records as one long table, loadable as a
`datasets.Dataset` (`Dataset.from_parquet(path)`, or `load_dataset("parquet", data_files=path)`).

One row per (step, example, response type): step, stage, example_id, type, the probe's statistics (logp_sum,
logp_mean, n_tokens, a_norm, pe, entropy; the argmax rows carry the first three), and `dlogp`, the change of
logp_sum since the first step that probed the same (example, type).

`load_records` is `load_run` for the commands that read a run's rows (export, plot, compare, influence, report):
a row without a field they take is one line naming the file, line and field.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from ldyn.errors import LdynError
from ldyn.runs.directory import DECOMPOSITION, METRICS, PROBES, Run, load_run
from ldyn.runtime.files import check_rows, writable_file, write_atomically

FORMATS = ("parquet", "csv")
COLUMNS = (
    "step",
    "stage",
    "example_id",
    "type",
    "logp_sum",
    "dlogp",
    "logp_mean",
    "n_tokens",
    "a_norm",
    "pe",
    "entropy",
)
NUMBER = (int, float, type(None))  # null: a non-finite value, as strict JSON writes it
RECORDS = {  # the fields the readers take from each row file's rows, and their kinds
    METRICS: {"step": int, "stage": str},
    PROBES: {"step": int, "stage": str, "example_id": (str, int), "type": str, "logp_sum": NUMBER},
    DECOMPOSITION: {"step": int, "stage": str, "type": str},
}


def load_records(run_dir: str | Path) -> Run:
    """The run (`load_run`), every row of its metrics, probe and decomposition files checked to have the fields
    the readers take (`RECORDS`)."""
    run = load_run(run_dir)
    for name, rows in ((METRICS, run.metrics), (PROBES, run.probes), (DECOMPOSITION, run.decomposition)):
        check_rows(run.path / name, rows, RECORDS[name])
    return run


def probe_table_rows(run_dir: str | Path) -> list[dict]:
    """The run's probe records with `dlogp` since the first probe, every row with every column (None if absent)."""
    run = load_records(run_dir)
    if not run.probes:
        raise LdynError("holds no probe records yet (probes.jsonl is empty or missing)", file=str(run.path))
    first: dict[tuple[str, str], float] = {}
    rows = []
    for r in sorted(run.probes, key=lambda r: r["step"]):
        key = (r["example_id"], r["type"])
        logp = math.nan if r["logp_sum"] is None else r["logp_sum"]
        first.setdefault(key, logp)
        row = {c: r.get(c) for c in COLUMNS}
        row["dlogp"] = logp - first[key]
        rows.append(row)
    return rows


def output_format(fmt: str | None, out: str | Path | None) -> str:
    """The format to write: `fmt`, else the one `out`'s suffix names (parquet without either); `out` must end in
    the format's suffix."""
    if fmt is not None and fmt not in FORMATS:
        raise LdynError(f"unknown format '{fmt}' (choices: {', '.join(FORMATS)})", field="--format")
    if out is None:
        return fmt or "parquet"
    named = Path(out).suffix.lower().removeprefix(".")
    if fmt is not None and named in FORMATS and named != fmt:
        message = f"is a .{named} name but --format is {fmt}: name it .{fmt} or give --format {named}"
        raise LdynError(message, file=str(out), field="--out")
    writable_file(out, "--out", [f".{f}" for f in ([fmt] if fmt else FORMATS)])
    return fmt or named


def export_run(run_dir: str | Path, fmt: str | None = None, out: str | Path | None = None) -> Path:
    """Write the long table to `out` (default RUN_DIR/export/probes.<fmt>) as `fmt` (default: the one `out`'s
    suffix names, else parquet); returns its path."""
    fmt = output_format(fmt, out)
    path = Path(out) if out else Path(run_dir) / "export" / f"probes.{fmt}"
    rows = probe_table_rows(run_dir)
    writable_file(path, "--out")
    import datasets

    datasets.disable_progress_bars()
    table = datasets.Dataset.from_list(rows)
    buffer = io.BytesIO()
    if fmt == "parquet":
        table.to_parquet(buffer)
    else:
        table.to_csv(buffer, index=False)
    return write_atomically(path, buffer.getvalue(), "--out")
