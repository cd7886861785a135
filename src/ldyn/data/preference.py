"""Preference pairs (prompt, chosen, rejected) with text responses: what the probe builder and the TRL examples
take. Any format of `formats.py` that has both responses loads; a conversational prompt stays a list of messages,
responses given as messages become their assistant text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ldyn.data.formats import load_examples, text_of


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str | list[dict]  # x
    chosen: str  # y⁺
    rejected: str  # y⁻
    extra: dict[str, str] = field(default_factory=dict)  # other requested response fields, e.g. an SFT target


def load_pairs(
    source, split: str = "train", n: int = 0, skip_empty: bool = False, fields: tuple[str, ...] = (), seed: int = 0
) -> tuple[list[Pair], int]:
    """The first `n` pairs (0 = all) of `source` and the number of rows skipped for an empty field (`skip_empty`;
    otherwise an error naming its line). `fields` names further response fields every row must have."""
    needed = {f: "a preference pair has it" for f in ("chosen", "rejected")}
    needed |= {f: "asked for" for f in fields if f not in needed}
    examples, skipped = load_examples(source, split, n, needed, skip_empty, seed)
    pairs = []
    for e in examples:
        texts = {f: text_of(e.responses[f]) for f in needed}  # chosen, rejected, then the other fields
        pairs.append(Pair(e.id, e.prompt, texts.pop("chosen"), texts.pop("rejected"), texts))
    return pairs, skipped
