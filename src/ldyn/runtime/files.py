"""Files that survive a kill: JSONL rows appended and flushed one batch at a time, and whole files written
atomically (a temporary file beside the target, then one rename), so a reader never sees half a file.

`append_rows` and `read_rows` are the only code that writes and reads JSONL results back (run directories, suite
logs, win-rate and generation caches); `writing` (and `write_atomically` on it) is the only temp-then-rename.
`writable_file` and `writable_folder` say, before anything is written, whether an output path can be written: a
command checks every path it will write first, so that a bad one fails before any other is touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ldyn.errors import LdynError


def writable_file(path: str | Path, field: str | None = None, suffixes: Iterable[str] = ()) -> Path:
    """`path` as a file that can be written (`writing` creates its missing folders), or one LdynError naming it
    and `field`: a folder, a name without one of `suffixes` (when given), a file where one of its folders should
    be, a nearest existing folder that is not writable. Creates nothing."""
    path = Path(path)
    suffixes = tuple(suffixes)
    if path.is_dir():
        hint = f", e.g. {path / ('out' + suffixes[0])}" if suffixes else ""
        raise LdynError(f"is a folder: give a file name{hint}", file=str(path), field=field)
    if suffixes and path.suffix.lower() not in suffixes:
        example = f"{path.stem or 'out'}{suffixes[0]}"
        raise LdynError(f"must end in {_either(suffixes)}, e.g. {example}", file=str(path), field=field)
    _check_nearest_folder(path.parent, path, field)
    return path


def writable_folder(path: str | Path, field: str | None = None) -> Path:
    """`path` as a folder that can be written into (missing folders are created when written to), or one
    LdynError naming it and `field`: a file, a file where one of its folders should be, a folder that is not
    writable. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LdynError("is a file, not a folder: give a folder", file=str(path), field=field)
    _check_nearest_folder(path, path, field)
    return path


def _check_nearest_folder(folder: Path, path: Path, field: str | None) -> None:
    """`folder`, or the nearest of its parents that exists, is a folder this process may write into."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise LdynError(f"cannot be written: {folder} is a file, not a folder", file=str(path), field=field)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LdynError(f"cannot be written: {folder} is not writable", file=str(path), field=field)


def _either(suffixes: tuple[str, ...]) -> str:
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


@contextlib.contextmanager
def writing(path: str | Path, field: str | None = None) -> Iterator[Path]:
    """A temporary path in `path`'s folder (created if missing) for the block to write; renamed onto `path` when
    the block ends, removed when it fails, so that the old file, if any, stays whole until the new one is complete
    and a failed write leaves nothing. A write the system refuses (a read-only place, a full disk) is one
    LdynError naming `path` and `field`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise LdynError(f"cannot be written ({reason}): choose another place", file=str(path), field=field) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_atomically(path: str | Path, data: str | bytes, field: str | None = None) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` through a temporary file in the same folder and one
    rename (`writing`): the old file, if any, stays whole until the new one is complete. Creates the folder."""
    path = Path(path)
    with writing(path, field) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
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
    line (or one that is not a JSON object) anywhere else fails naming the file and line."""
    return [row for _, row in _numbered_rows(path)]


def _numbered_rows(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # the last line of a killed run may be cut short
                break
            raise LdynError("malformed JSON", file=str(path), line=i) from None
        if not isinstance(row, dict):
            raise LdynError(f"must be a JSON object, got {type(row).__name__}", file=str(path), line=i)
        yield i, row


def check_rows(path: Path, rows: list[dict], required: dict[str, type | tuple[type, ...]]) -> None:
    """Fail naming the file, line and field at the first of `rows` (as `read_rows` read them from `path`) that
    lacks a key of `required` or holds a value of another kind there (a bool is no int); the file is read again
    to find the line only then."""
    for index, row in enumerate(rows):
        for key, kind in required.items():
            value = row.get(key)
            if key in row and isinstance(value, kind) and not (isinstance(value, bool) and bool not in _kinds(kind)):
                continue
            line = next((i for n, (i, _) in enumerate(_numbered_rows(path)) if n == index), None)
            what = "missing" if key not in row else f"must be {_names(kind)}, got {value!r}"
            message = f"{what} (not a row ldyn writes: fix or remove the line)"
            raise LdynError(message, file=str(path), line=line, field=key)


def _kinds(kind) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind) -> str:
    names = {int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))
