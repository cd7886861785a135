"""Reading JSON Lines with errors that name the file, the line and the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ldyn.errors import EmptyFieldError, LdynError

_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # the escape of half a UTF-16 pair, which JSON allows alone


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
            raise LdynError(f"expected a JSON object, got {json_type(obj)}", file=str(path), line=lineno)
        if _SURROGATE.search(text):
            _check_characters(obj, path, lineno)
        yield lineno, obj


def _check_characters(row: dict, path: Path, lineno: int) -> None:
    """Every string of `row` is text: no escape of a lone surrogate (half a character), which no tokenizer takes."""
    for key, value in row.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise LdynError(
                "has a lone surrogate escape (\\ud800-\\udfff, half of a character): fix or remove it",
                file=str(path),
                line=lineno,
                field=key,
            ) from None


def json_type(value) -> str:
    """The JSON name of a value's type, as the file's author sees it: string, number, boolean, null, list, object."""
    if isinstance(value, bool):
        return "boolean"
    names = {str: "string", int: "number", float: "number", type(None): "null", list: "list", dict: "object"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def text_field(row: dict, name: str, path: str | Path, lineno: int) -> str:
    """The non-empty string `row[name]`, or an error naming the file, line and field."""
    if name not in row:
        raise LdynError("missing", file=str(path), line=lineno, field=name)
    value = row[name]
    if not isinstance(value, str):
        raise LdynError(f"must be a string, got {json_type(value)}", file=str(path), line=lineno, field=name)
    if not value.strip():
        raise EmptyFieldError("is empty", file=str(path), line=lineno, field=name)
    return value
