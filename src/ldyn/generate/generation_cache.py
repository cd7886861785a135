"""The generations of `ldyn probes build` on disk (`<out>.cache.jsonl`), keyed by what made them, so that an
interrupted build continues without asking again.

Each line is one generation: `{"key", "field", "id", "text"}`, with `text` null and `failures` (the reasons) for a
failed one, which is kept but not final: the next build asks again. Only a line of exactly that shape is reused as
a response: anything else (a text that is a number, a field that is not generated, a line that is not JSON) means
the file is damaged, and is one error naming the file and line rather than a response in a probe set. A last line
cut short by a kill is left out with a warning, and cut off before the next generation is appended.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from ldyn.data.jsonl import json_type
from ldyn.errors import LdynError
from ldyn.generate.probe_types import GENERATED
from ldyn.runtime.files import append_rows

_KEY = re.compile(r"[0-9a-f]{40}")


class GenerationCache:
    """Generations on disk, keyed by what made them; failures are kept with their reasons but are not final."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, str] = {}
        self.cut_at: int | None = None  # the size to cut the file to before appending (after a cut last line)
        for key, text in self._read():
            if text.strip():  # an empty text is not a generation (as a failure, it is asked again)
                self.done[key] = text

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()

    def put(self, key: str, field_: str, row_id: str, text: str | None, reasons: list[str]) -> None:
        row = {"key": key, "field": field_, "id": row_id, "text": text}
        if text is None:
            row["failures"] = reasons
        try:
            if self.cut_at is not None:
                with open(self.path, "r+b") as f:
                    f.truncate(self.cut_at)
                self.cut_at = None
            append_rows(self.path, [row])
        except OSError as e:
            raise LdynError(f"cannot write: {e.strerror or e}", file=str(self.path)) from None
        if text is not None:
            self.done[key] = text

    def _read(self) -> list[tuple[str, str]]:
        """(key, text) of every successful generation in the file; a damaged line raises LdynError."""
        if not self.path.exists():
            return []
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise LdynError(f"cannot read: {e.strerror or e}", file=str(self.path)) from None
        lines = raw.split(b"\n")
        out, offset = [], 0
        for number, line in enumerate(lines, start=1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                if number == len(lines):  # no newline after it: a line cut short by a kill
                    print(f"ldyn: warning: {self.path}:{number}: cut short; generated again", file=sys.stderr)
                    self.cut_at = start
                    break
                what = "not valid UTF-8" if isinstance(e, UnicodeDecodeError) else "malformed JSON"
                raise self._damaged(what, number) from None
            text = self._check(row, number)
            if text is not None:
                out.append((row["key"], text))
        return out

    def _check(self, row, number: int) -> str | None:
        """The text of a well-formed line (None for a failure); anything else is a damaged cache."""
        if not isinstance(row, dict):
            raise self._damaged(f"expected a JSON object, got {json_type(row)}", number)
        if not isinstance(row.get("key"), str) or not _KEY.fullmatch(row["key"]):
            raise self._damaged("'key' is not a generation's key", number)
        if row.get("field") not in GENERATED:
            raise self._damaged(f"'field' {row.get('field')!r} is not a generated type", number)
        if "text" not in row or not (row["text"] is None or isinstance(row["text"], str)):
            got = json_type(row["text"]) if "text" in row else "nothing"
            raise self._damaged(f"'text' must be a string or null, got {got}", number)
        return row["text"]

    def _damaged(self, what: str, number: int) -> LdynError:
        return LdynError(
            f"{what}: the generation cache is damaged; delete it to generate again", file=str(self.path), line=number
        )
