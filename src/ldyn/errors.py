"""The one error type users see.

Anything that is the user's fault -- a malformed data file, an unknown loss, a typo in a config key -- raises
`LdynError`. The CLI prints it as a single line (`ldyn: error: FILE:LINE: field 'chosen': is empty`) and exits
with status 2, without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LdynError(Exception):
    """A user-facing error that names where the problem is: file, line and field when known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message, self.file, self.line, self.field = message, file, line, field

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        what = f"field '{self.field}': " if self.field is not None else ""
        return f"{where}{what}{self.message}"


class EmptyFieldError(LdynError):
    """A required text field is present but empty (skippable where a config says so)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ' (choices: a, b, c)' when nothing is close."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (choices: {', '.join(choices)})"
