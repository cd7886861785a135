"""The embedded HH-style set, written for ldyn: 48 training and 16 held-out prompts (`embedded/hh_style.jsonl`).

Each row has chosen, rejected, a meaning-preserving rephrase of each (chosen_gptsemantic, reject_gptsemantic), a
format-keeping rewrite of each that changes the meaning (chosen_gptformat, reject_gptformat) and an unrelated
human-written sentence of similar length (irr_hum). The rule-based types are derived here, seeded:
- irr_train: another training prompt's chosen response (y_{j≠u}⁺), by a random derangement;
- irr_test: a held-out (test-split) prompt's chosen response (y_test⁺);
- random_permute: the words of chosen, shuffled (y_urnd⁺);
- random_nonhum: the words of irr_test, shuffled (y_rnd).
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from ldyn.data.jsonl import read_jsonl


def embedded_path() -> Path:
    return Path(str(resources.files("ldyn.data") / "embedded" / "hh_style.jsonl"))


def shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " " + " ".join(words)


def embedded_rows(seed: int = 0) -> list[tuple[int, dict]]:
    """(line, row) of the training split with the four rule-based types derived (seeded, reproducible)."""
    rows = list(read_jsonl(embedded_path()))
    train = [(ln, dict(r)) for ln, r in rows if r["split"] == "train"]
    test = [r for _, r in rows if r["split"] == "test"]
    rng = random.Random(seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a derangement: never itself
    test_order = list(range(len(test)))
    rng.shuffle(test_order)
    for i, (_, row) in enumerate(train):
        row["irr_train"] = train[other[i]][1]["chosen"]
        row["irr_test"] = test[test_order[i % len(test)]]["chosen"]
        row["random_permute"] = shuffle_words(row["chosen"], rng)
        row["random_nonhum"] = shuffle_words(row["irr_test"], rng)
    return train
