"""Generated sources: `data.train` or `probe.path` naming a seeded task of `rl/tasks.py` instead of a file.

    arithmetic                                       64 one-digit additions (seed 0)
    arithmetic:n=128,digits=2,operators=+-,seed=1    `arithmetic_rows`' arguments, key=value, comma-separated

Keys: `n` (rows, default 64), `seed` (default 0: the questions do not change with the run's seed; another seed is
another set, e.g. held-out probes), `digits`, `operators` (characters among + - *), `terms` and `conversational`
(true/false), as `rl.tasks.arithmetic_rows` takes them. A spec gives the same rows wherever it is named, so
`data.train` and `probe.path` given one spec train on and probe the same questions, their responses typed as the
probes expect (chosen: the result, rejected: a near miss, chosen_gptsemantic: "The answer is 12.", ...), and each
row's `answer` is what the rewards check. An existing file of that name is a file, never a task.

The rows are generated here, in the training layer, because `data/` sits beneath `rl/` (docs/architecture.md):
`resolve` turns a spec into the rows, which the readers of `data/` take as rows in memory.
"""

from __future__ import annotations

from pathlib import Path

from ldyn.errors import LdynError, did_you_mean
from ldyn.rl.tasks import arithmetic_rows

TASKS = {"arithmetic": arithmetic_rows}
DEFAULT_ROWS = 64


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError("true or false")
    return text.lower() == "true"


KEYS = {  # key -> how its text becomes the argument
    "n": int,
    "seed": int,
    "digits": int,
    "terms": int,
    "operators": tuple,  # "+-" -> ("+", "-")
    "conversational": _flag,
}


def is_task(source) -> bool:
    """Whether `source` names a generated task (its name, alone or followed by ":key=value,...")."""
    return isinstance(source, str) and source.partition(":")[0] in TASKS and not Path(source).exists()


def task_rows(source: str, key: str) -> list[dict]:
    """The rows of the task spec `source` (`key`: the config key that named it, for errors)."""
    name, _, spec = source.partition(":")
    args = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        arg, sep, text = item.partition("=")
        if not sep or arg not in KEYS:
            hint = did_you_mean(arg, KEYS) if sep else " (write key=value)"
            raise LdynError(f"'{name}' task: unknown setting '{item}'{hint}", field=key)
        try:
            args[arg] = KEYS[arg](text.strip())
        except ValueError as e:
            raise LdynError(f"'{name}' task: {arg} must be {e if arg == 'conversational' else 'a whole number'}, "
                            f"got '{text}'", field=key) from None  # fmt: skip
    n, seed = args.pop("n", DEFAULT_ROWS), args.pop("seed", 0)
    if n < 1:
        raise LdynError(f"'{name}' task: n must be at least 1, got {n}", field=key)
    try:
        return TASKS[name](n, seed, **args)
    except LdynError as e:
        raise LdynError(f"'{name}' task: {e.message}", field=key) from None


def resolve(source, key: str):
    """The rows of a task spec, or `source` as it is (a file, a dataset, "embedded", rows in memory)."""
    return task_rows(source, key) if is_task(source) else source
