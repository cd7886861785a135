"""`ldyn export RUN_DIR --table probes|decomposition|metrics --format parquet|csv`: one of a run's row files as
one table, loadable as a `datasets.Dataset` (`Dataset.from_parquet(path)`, or `load_dataset("parquet",
data_files=path)`).

- `probes` (the default): one row per (step, example, response type): step, stage, example_id, type, the probe's
  statistics (logp_sum, logp_mean, n_tokens, a_norm, pe, entropy; the argmax rows carry the first three), `dlogp`,
  the change of logp_sum since the first step that probed the same (example, type), and the texts.
- `decomposition`: decomposition.jsonl's rows, one per decomposed update and (example, type): step, stage,
  example_id, type, observed, predicted, the y⁺/y⁻ split and every further column the run wrote, and the texts.
- `metrics`: metrics.jsonl's rows, one per update: step, stage and every other column (a list, such as the ids
  of the examples trained on, as its JSON text).

The texts (`TEXTS`) come from probe_set.jsonl: `prompt` and `response`, None where the run has no text for the row
(a run written before ldyn kept them; the argmax types, which have no fixed text).

`load_records` is `load_run` for the commands that read a run's rows (export, plot, compare, influence, report):
a row without a field they take is one line naming the file, line and field.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from ldyn.errors import LdynError
from ldyn.runs.directory import DECOMPOSITION, METRICS, PROBES, Run, load_run
from ldyn.runtime.files import check_rows, writable_file, write_atomically

FORMATS = ("parquet", "csv")
TABLES = ("probes", "decomposition", "metrics")
TEXTS = ("prompt", "response")  # the text columns of the probes and decomposition tables
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
    "topk_mass",
    "topk_entropy",
    *TEXTS,
)
DECOMPOSITION_FIRST = ("step", "stage", "example_id", "type", "observed", "predicted", "sgd_positive", "sgd_negative")
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


def table_rows(run_dir: str | Path, table: str = "probes") -> list[dict]:
    """The rows of one of the run's tables (`TABLES`), every row with every column (None where absent)."""
    if table not in TABLES:
        raise LdynError(f"unknown table '{table}' (choices: {', '.join(TABLES)})", field="--table")
    if table == "probes":
        return probe_table_rows(run_dir)
    run = load_records(run_dir)
    name, rows = (DECOMPOSITION, run.decomposition) if table == "decomposition" else (METRICS, run.metrics)
    if not rows:
        hint = " (decompose.every=0?)" if table == "decomposition" else ""
        raise LdynError(f"holds no {table} records yet ({name} is empty or missing{hint})", file=str(run.path))
    if table == "metrics":
        return filled([{k: _scalar(v) for k, v in r.items()} for r in rows], ("step", "stage"))
    return filled([r | texts_of(run, r) for r in rows], DECOMPOSITION_FIRST, last=TEXTS)


def filled(rows: list[dict], first: tuple[str, ...], last: tuple[str, ...] = ()) -> list[dict]:
    """Every row with the same columns: `first` (those any row has), every other column in order of first
    appearance, then `last`; None where a row has no value."""
    seen = dict.fromkeys(k for r in rows for k in r)
    columns = [c for c in first if c in seen] + [c for c in seen if c not in first and c not in last] + list(last)
    return [{c: r.get(c) for c in columns} for r in rows]


def texts_of(run: Run, row: dict) -> dict:
    """The row's `prompt` and `response` texts from the run's probe_set.jsonl (None where it has none)."""
    example = str(row.get("example_id"))
    return {"prompt": run.texts.get((example, "prompt")), "response": run.texts.get((example, row["type"]))}


def _scalar(value):
    """A list or an object (the ids trained on) as its JSON text: one column of one type."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def probe_table_rows(run_dir: str | Path) -> list[dict]:
    """The run's probe records with `dlogp` since the first probe and the texts, every row with every column (None
    if absent)."""
    run = load_records(run_dir)
    if not run.probes:
        raise LdynError("holds no probe records yet (probes.jsonl is empty or missing)", file=str(run.path))
    first: dict[tuple[str, str], float] = {}
    rows = []
    for r in sorted(run.probes, key=lambda r: r["step"]):
        key = (r["example_id"], r["type"])
        logp = math.nan if r["logp_sum"] is None else r["logp_sum"]
        first.setdefault(key, logp)
        row = {c: r.get(c) for c in COLUMNS} | texts_of(run, r)
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


def export(run_dir: str | Path, out: str | Path | None = None, fmt: str | None = None, table: str = "probes") -> Path:
    """Write one of the run's tables (`TABLES`) to `out` (default RUN_DIR/export/<table>.<fmt>) as `fmt` (default:
    the one `out`'s suffix names, else parquet); returns its path."""
    return export_run(run_dir, fmt, out, table)


def export_run(
    run_dir: str | Path, fmt: str | None = None, out: str | Path | None = None, table: str = "probes"
) -> Path:
    """`export`, with the format first (the CLI's order)."""
    fmt = output_format(fmt, out)
    path = Path(out) if out else Path(run_dir) / "export" / f"{table}.{fmt}"
    rows = table_rows(run_dir, table)
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
