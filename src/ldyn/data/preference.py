"""Preference pairs (prompt, chosen, rejected) from the embedded set, a JSONL file or a Hugging Face dataset.

The row format is recognised from the columns, so any copy of these datasets works (hub name, `save_to_disk` dir):
- `prompt`, `chosen`, `rejected` as strings: used as they are (our JSONL format and the authors' probe files);
- `chosen`, `rejected` as full dialogues (Anthropic/hh-rlhf): split at the last "\\n\\nAssistant:" as the paper's
  code does; the prompt keeps that marker and the response keeps its leading space;
- `prompt` plus `chosen`/`rejected` as message lists (HuggingFaceH4/ultrafeedback_binarized): the response is the
  last assistant message and the prompt is formatted "Human: {prompt}\\nAssistant:" as in the paper's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ldyn.data.embedded import embedded_path, embedded_rows
from ldyn.data.jsonl import read_jsonl, text_field
from ldyn.errors import EmptyFieldError, LdynError

HH_ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str  # x
    chosen: str  # y⁺
    rejected: str  # y⁻
    extra: dict[str, str] = field(default_factory=dict)  # other requested response fields, e.g. an SFT target


def split_hh(text: str, where: dict) -> tuple[str, str]:
    """'...\\n\\nAssistant: reply' -> ('...\\n\\nAssistant:', ' reply'), split at the *last* marker."""
    i = text.rfind(HH_ASSISTANT)
    if i < 0:
        raise LdynError(f"no '{HH_ASSISTANT.strip()}' turn to split the dialogue at", **where)
    return text[: i + len(HH_ASSISTANT)], text[i + len(HH_ASSISTANT) :]


def _last_assistant(messages, where: dict) -> str:
    replies = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not replies or not isinstance(replies[-1], str) or not replies[-1].strip():
        raise LdynError("has no non-empty assistant message", **where)
    return replies[-1]


def pair_from_row(row: dict, file: str, line: int, default_id: str, fields: tuple[str, ...] = ()) -> Pair:
    """One row in any of the three supported formats -> Pair; `fields` are further text fields it must have."""
    row_id = str(row.get("id", default_id))
    if isinstance(row.get("chosen"), list):  # UltraFeedback-style messages
        prompt = text_field(row, "prompt", file, line)
        chosen = _last_assistant(row["chosen"], dict(file=file, line=line, field="chosen"))
        if not isinstance(row.get("rejected"), list):
            raise LdynError("must be a list of messages like 'chosen'", file=file, line=line, field="rejected")
        rejected = _last_assistant(row["rejected"], dict(file=file, line=line, field="rejected"))
        return Pair(row_id, f"Human: {prompt}\nAssistant:", chosen, rejected)
    chosen, rejected = text_field(row, "chosen", file, line), text_field(row, "rejected", file, line)
    if "prompt" in row:
        extra = {f: text_field(row, f, file, line) for f in fields if f not in ("chosen", "rejected")}
        return Pair(row_id, text_field(row, "prompt", file, line), chosen, rejected, extra)
    if set(fields) - {"chosen", "rejected"}:
        missing = sorted(set(fields) - {"chosen", "rejected"})[0]
        raise LdynError(
            "missing (dialogue-format rows have only chosen and rejected)", file=file, line=line, field=missing
        )
    prompt, chosen = split_hh(chosen, dict(file=file, line=line, field="chosen"))
    prompt_r, rejected = split_hh(rejected, dict(file=file, line=line, field="rejected"))
    if prompt_r != prompt:
        raise LdynError(
            "dialogue before the last assistant turn differs from the one in 'chosen'",
            file=file,
            line=line,
            field="rejected",
        )
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise EmptyFieldError("has an empty last assistant turn", file=file, line=line, field=name)
    return Pair(row_id, prompt, chosen, rejected)


def hf_rows(name: str, split: str, n: int = 0):
    """Rows of a Hugging Face dataset: a `save_to_disk` directory or a hub name (`name:data_dir` picks a subset)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise LdynError("reading Hugging Face datasets needs the `datasets` package") from None
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            repo, _, data_dir = name.partition(":")
            ds = datasets.load_dataset(repo, data_dir=data_dir or None, split=split)
    except Exception as e:  # noqa: BLE001 -- datasets raises many types; all mean "cannot load this"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LdynError(
            f"cannot load Hugging Face dataset (split '{split}'): {first}. Without network access, "
            "pass a local JSONL or a dataset directory saved with `save_to_disk`",
            file=name,
        ) from None
    if n:
        ds = ds.select(range(min(n, len(ds))))
    return enumerate(ds, start=1)


def load_pairs(
    source: str, split: str = "train", n: int = 0, skip_empty: bool = False, fields: tuple[str, ...] = (), seed: int = 0
) -> tuple[list[Pair], int]:
    """Preference pairs from "embedded", a JSONL path, a dataset directory or a hub dataset name.

    Returns (the first `n` pairs (0 = all), number of rows skipped). A row with an empty prompt or response is an
    error naming its line, unless `skip_empty`, which drops it (the authors' HH probe file has one empty rejected).
    `fields` names further response fields every row must have (kept in `Pair.extra`); `seed` seeds the embedded
    set's derived types.
    """
    if source == "embedded":
        path = embedded_path()
        rows = (
            embedded_rows(seed) if split == "train" else [(ln, r) for ln, r in read_jsonl(path) if r["split"] == split]
        )
        file = str(path)
    elif Path(source).suffix in (".jsonl", ".json") or Path(source).is_file():
        rows, file = read_jsonl(source), source
    else:
        rows, file = hf_rows(source, split, n), f"{source}[{split}]"
    pairs, skipped = [], 0
    for index, (line, row) in enumerate(rows):
        try:
            pairs.append(pair_from_row(row, file, line, default_id=str(index), fields=fields))
        except EmptyFieldError:
            if not skip_empty:
                raise
            skipped += 1
        if n and len(pairs) == n:
            break
    if not pairs:
        raise LdynError(
            "no preference pairs found" + (f" in split '{split}'" if source == "embedded" else ""), file=file
        )
    return pairs, skipped
