"""Reading JSON Lines with errors that name the file, the line and the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ldyn.errors import EmptyFieldError, LdynError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for every non-blank line; any bad line raises LdynError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LdynError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LdynError(
                f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})", file=str(path), line=lineno
            ) from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise LdynError(f"malformed JSON: {e.msg} at column {e.colno}", file=str(path), line=lineno) from None
        if not isinstance(obj, dict):
            raise LdynError(f"expected a JSON object, got {type(obj).__name__}", file=str(path), line=lineno)
        yield lineno, obj


def text_field(row: dict, name: str, path: str | Path, lineno: int) -> str:
    """The non-empty string `row[name]`, or an error naming the file, line and field."""
    if name not in row:
        raise LdynError("missing", file=str(path), line=lineno, field=name)
    value = row[name]
    if not isinstance(value, str):
        raise LdynError(f"must be a string, got {type(value).__name__}", file=str(path), line=lineno, field=name)
    if not value.strip():
        raise EmptyFieldError("is empty", file=str(path), line=lineno, field=name)
    return value
