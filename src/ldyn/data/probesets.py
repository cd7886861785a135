"""Probe sets: prompts, each with many named responses whose log-probabilities we track during training.

The format is the paper authors' (`prompt` plus one field per response type, as in their formal_prob_train.jsonl);
it loads as it is, and so do conversational probe sets (message lists) and every other format of `formats.py`. The
embedded set (`data/embedded.py`) is written in the authors' format.
"""

from __future__ import annotations

from ldyn.data.formats import Example, example_from_row, read_rows, require
from ldyn.data.jsonl import json_type
from ldyn.errors import LdynError

# The paper's probed response types, in its order, with the symbols its figures use.
SYMBOLS = {
    "chosen": "y_u⁺",
    "rejected": "y_u⁻",
    "chosen_gptsemantic": "y_gpts⁺",
    "reject_gptsemantic": "y_gpts⁻",
    "chosen_gptformat": "y_gptf⁺",
    "reject_gptformat": "y_gptf⁻",
    "irr_train": "y_{j≠u}⁺",
    "irr_test": "y_test⁺",
    "irr_hum": "y_hum",
    "random_permute": "y_urnd⁺",
    "random_nonhum": "y_rnd",
    "chosen_initial": "y_init",
    "argmax": "y*",
    "except_argmax": "y^c",
}
PAPER_TYPES = tuple(t for t in SYMBOLS if t not in ("argmax", "except_argmax"))
# Figure groups, as in the paper's Figures 3-4. "argmax" and "except_argmax" are computed along chosen, not read.
GROUPS = {
    "chosen": ("chosen", "chosen_gptsemantic", "chosen_gptformat", "chosen_initial"),
    "rejected": ("rejected", "reject_gptsemantic", "reject_gptformat"),
    "irrelevant": ("irr_train", "irr_test", "irr_hum"),
    "random": ("random_permute", "random_nonhum"),
    "argmax": ("argmax",),
}
MEASURED = ("argmax", "except_argmax")  # measured along chosen under teacher forcing: no text of their own
# sampled by the model at step 0, not read: its rollouts split by reward (an RL run's, `train/rollout_probes.py`,
# or an RL trainer's, `integrations/rollouts.py`), and its samples on held-out prompts (their drop is a KL)
ROLLOUT_TYPES = ("rollout_correct", "rollout_incorrect")
HELD_OUT_SAMPLE = "held_out_sample"


def probe_set_rows(examples: list[Example], types: list[str]) -> list[dict]:
    """The probed texts, for the run directory's probe_set.jsonl: one row per (example_id, type), the prompt first
    (type "prompt"), then each of `types` the example has; a conversation as its turns' "role: content" lines."""
    rows = []
    for e in examples:
        rows.append({"example_id": e.id, "type": "prompt", "text": as_text(e.prompt)})
        kept = [t for t in types if t in e.responses and t not in MEASURED]
        rows += [{"example_id": e.id, "type": t, "text": as_text(e.responses[t])} for t in kept]
    return rows


def as_text(value: str | list[dict]) -> str:
    """A prompt or response as one text: a text as it is, a conversation as its turns' "role: content" lines."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


def load_probe_set(
    path, types: list[str] = ("auto",), n: int = 0, seed: int = 0, n_key: str = "probe.n"
) -> tuple[list[Example], list[str]]:
    """The first `n` probe prompts (0 = all) with the requested response types, from any source `formats.read_rows`
    reads: the authors' JSONL format (`prompt` and one field per response type), or the same with a conversational
    prompt and responses (message lists), or any other format of `formats.py` (its `chosen`, `rejected`, ...).

    `types == ["auto"]` selects every paper type the file has. Named types must exist in every row; `chosen` is
    always required because the argmax response is measured along it. An empty (or null) response of another type
    is left out of that prompt's responses (the authors' HH file has 21 empty chosen_initial), so the file loads as
    it is; a value of another kind (a number) is an error naming its line, and so is an id used twice.
    """
    rows, file = read_rows(path, seed=seed)
    available = len(rows)
    if n:
        rows = rows[:n]
    if not rows:
        raise LdynError("no probe prompts found", file=file)
    examples = [example_from_row(row, file, line, str(i)) for i, (line, row) in enumerate(rows)]
    if list(types) == ["auto"]:
        types = [t for t in PAPER_TYPES if t in examples[0].responses or t in rows[0][1]]
    types = list(dict.fromkeys(["chosen", *types]))
    out, ids = [], {}
    for (_, row), e in zip(rows, examples):
        _check_types(row, e, types)
        if e.id in ids:
            message = f"'{e.id}' is also the id of line {ids[e.id]}: probe records are kept by id, so give each its own"
            raise LdynError(message, file=file, line=e.line, field="id")
        ids[e.id] = e.line
        missing = [t for t in types if t not in e.responses and t not in row]
        if missing:
            raise LdynError(
                f"probe type '{missing[0]}' is not in this file (it has: {', '.join(sorted(e.responses))})",
                file=file,
                line=e.line,
                field=missing[0],
            )
        e = require(e, {"chosen": "the argmax response is measured along it"}, optional_empty=True)
        out.append(Example(e.id, e.prompt, {t: e.responses[t] for t in types if t in e.responses}, e.file, e.line))
    if n > available:  # after the rows' own checks, which name a line
        raise LdynError(f"{n_key}={n} asks for more prompts than the probe set has ({available})", file=file)
    return out, types


def _check_types(row: dict, example: Example, types: list[str]) -> None:
    """Every probed type of the row is a text or a list of messages, or null (no response of that type for this
    prompt, as an empty one); a number or a list of strings is an error, not a type silently left out."""
    for t in types:
        if t not in example.responses and row.get(t) is not None:
            raise LdynError(
                f"probe type '{t}' must be a string or a list of messages ({{role, content}}), got {json_type(row[t])}",
                file=example.file,
                line=example.line,
                field=t,
            )
