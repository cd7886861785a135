"""Files that survive a kill: JSONL rows appended and flushed one batch at a time, and whole files written
atomically (a temporary file beside the target, then one rename), so a reader never sees half a file.

`append_rows` and `read_rows` are the only code that writes and reads JSONL results back (run directories, suite
logs, win-rate and generation caches); `write_atomically` is the only temp-then-rename.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ldyn.errors import LdynError


def write_atomically(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` through a temporary file in the same folder and one
    rename: the old file, if any, stays whole until the new one is complete. Creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return path


def strict(value):
    """A value as strict JSON allows it: NaN and ±inf become null (json.dumps would write bare NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a JSONL file as strict JSON and flush them to disk (a kill loses at most the line being
    written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(strict(row), allow_nan=False) + "\n" for row in rows]
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file ([] if it does not exist); a last line cut short by a kill is skipped, a malformed
    line anywhere else fails naming the file and line."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):  # the last line of a killed run may be cut short
                break
            raise LdynError("malformed JSON", file=str(path), line=i) from None
    return rows
