"""Probe sets: prompts, each with many named responses whose log-probabilities we track during training.

The format is the paper authors' (`prompt` plus one field per response type, as in their formal_prob_train.jsonl);
it loads as it is. The embedded set (`data/embedded.py`) is written in the same format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ldyn.data.embedded import embedded_path, embedded_rows
from ldyn.data.jsonl import read_jsonl, text_field
from ldyn.errors import EmptyFieldError, LdynError

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


@dataclass(frozen=True)
class ProbeExample:
    id: str
    prompt: str  # x_u
    responses: dict[str, str]  # response type -> text, e.g. {"chosen": ..., "irr_test": ...}


def probe_rows(source, seed: int = 0, split: str = "train") -> tuple[list[tuple[int, dict]], str]:
    """(line, row) pairs and a name for errors, from "embedded", a JSONL file, a `save_to_disk` folder or hub name
    of a Hugging Face dataset, or rows in memory (a list of dicts or a `datasets.Dataset`)."""
    if not isinstance(source, str):
        return list(enumerate(source, start=1)), "<probe rows>"
    if source == "embedded":
        return embedded_rows(seed), str(embedded_path())
    if Path(source).suffix in (".jsonl", ".json") or Path(source).is_file():
        return list(read_jsonl(source)), source
    from ldyn.data.preference import hf_rows

    return list(hf_rows(source, split)), f"{source}[{split}]"


def load_probe_set(
    path, types: list[str] = ("auto",), n: int = 0, seed: int = 0, n_key: str = "probe.n"
) -> tuple[list[ProbeExample], list[str]]:
    """The first `n` probe prompts (0 = all) with the requested response types, from any source `probe_rows`
    reads (the authors' JSONL format: `prompt` and one field per response type).

    `types == ["auto"]` selects every paper type the file has. Named types must exist in every row; `chosen` is
    always required because the argmax response is measured along it. An empty response of another type is left
    out of that prompt's responses (the authors' HH file has 21 empty chosen_initial), so the file loads as it is.
    """
    rows, file = probe_rows(path, seed)
    available = len(rows)
    if n:
        rows = rows[:n]
    if not rows:
        raise LdynError("no probe prompts found", file=file)
    first = rows[0][1]
    if list(types) == ["auto"]:
        types = [t for t in PAPER_TYPES if isinstance(first.get(t), str)]
    types = list(dict.fromkeys(["chosen", *types]))
    examples = []
    for line, row in rows:
        prompt = text_field(row, "prompt", file, line)
        responses = {}
        for t in types:
            if t not in row:
                have = sorted(k for k, v in row.items() if isinstance(v, str) and k not in ("prompt", "id", "split"))
                raise LdynError(
                    f"probe type '{t}' is not in this file (it has: {', '.join(have)})", file=file, line=line, field=t
                )
            try:
                responses[t] = text_field(row, t, file, line)
            except EmptyFieldError:
                if t == "chosen":
                    raise
        examples.append(ProbeExample(str(row.get("id", len(examples))), prompt, responses))
    if n > available:  # after the rows' own checks, which name a line
        raise LdynError(f"{n_key}={n} asks for more prompts than the probe set has ({available})", file=file)
    return examples, types
