"""`ldyn export RUN_DIR --format parquet|csv`: a run's probe records as one long table, loadable as a
`datasets.Dataset` (`Dataset.from_parquet(path)`, or `load_dataset("parquet", data_files=path)`).

One row per (step, example, response type): step, stage, example_id, type, the probe's statistics (logp_sum,
logp_mean, n_tokens, a_norm, pe, entropy; the argmax rows carry the first three), and `dlogp`, the change of
logp_sum since the first step that probed the same (example, type).
"""

from __future__ import annotations

import io
from pathlib import Path

from ldyn.errors import LdynError
from ldyn.runs.directory import load_run
from ldyn.runtime.files import write_atomically

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


def probe_table_rows(run_dir: str | Path) -> list[dict]:
    """The run's probe records with `dlogp` since the first probe, every row with every column (None if absent)."""
    run = load_run(run_dir)
    if not run.probes:
        raise LdynError("holds no probe records (probes.jsonl is empty or missing)", file=str(run.path))
    first: dict[tuple[str, str], float] = {}
    rows = []
    for r in sorted(run.probes, key=lambda r: r["step"]):
        key = (r["example_id"], r["type"])
        first.setdefault(key, r["logp_sum"])
        row = {c: r.get(c) for c in COLUMNS}
        row["dlogp"] = r["logp_sum"] - first[key]
        rows.append(row)
    return rows


def export_run(run_dir: str | Path, fmt: str = "parquet", out: str | Path | None = None) -> Path:
    """Write the long table to `out` (default RUN_DIR/export/probes.<fmt>); returns its path."""
    if fmt not in FORMATS:
        raise LdynError(f"unknown format '{fmt}' (choices: {', '.join(FORMATS)})", field="--format")
    import datasets

    datasets.disable_progress_bars()
    table = datasets.Dataset.from_list(probe_table_rows(run_dir))
    path = Path(out) if out else Path(run_dir) / "export" / f"probes.{fmt}"
    buffer = io.BytesIO()
    if fmt == "parquet":
        table.to_parquet(buffer)
    else:
        table.to_csv(buffer, index=False)
    return write_atomically(path, buffer.getvalue())
