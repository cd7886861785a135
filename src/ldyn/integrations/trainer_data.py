"""The probe set a host trainer's own data gives: `LearningDynamicsCallback()` with no probe set of its own.

The first `n` rows of the trainer's `train_dataset` are the trained prompts; when it has an `eval_dataset`, the
first `held_out` rows of that are held-out prompts (their ids start with "eval/"). Every row is read by
`data.formats` as training rows are, so every TRL dataset format works (preference, prompt-completion, language
modelling, conversational): a row gives `chosen` (the chosen response, the completion or the last assistant turn)
and, for preference data, `rejected`; KTO's unpaired rows are paired by prompt (desirable: `chosen`,
undesirable: `rejected`). Beside what the data has, the paper's rule-based types are derived, seeded,
as `ldyn probes build` derives them (paper.md §5):

- `irr_train`  the chosen response of another probed training prompt (a seeded derangement; for a held-out
  prompt, of a probed training prompt)
- `irr_test`   the chosen response of an eval row (else of a training row that is not probed; of the first `POOL`
  rows beyond the probed ones)
- `random_permute`  the words of the prompt's own chosen response, shuffled
- `random_nonhum`   the words of its `irr_test` response, shuffled

Responses keep their form: a conversational response stays an assistant message, so probes are rendered with the
trainer's chat template exactly as its training rows are. The argmax response is measured along `chosen` by the
probe itself.
"""

from __future__ import annotations

import random
from dataclasses import replace

from ldyn.data.embedded import shuffle_words
from ldyn.data.formats import Example, example_from_row, is_messages, text_of
from ldyn.data.probesets import ROLLOUT_TYPES
from ldyn.errors import LdynError
from ldyn.integrations.host import warn

DERIVED = ("irr_train", "irr_test", "random_permute", "random_nonhum")
# rows read beyond the probed ones, irr_test's choices: a whole training set is never read (20k rows: 0.3 s here,
# on every process, at the start of training)
POOL = 256


def dataset_rows(dataset, name: str, limit: int, eos_text: str | None = None) -> list[Example]:
    """The first `limit` rows of a trainer's dataset (a `datasets.Dataset` or a list of dicts; 0 = all) as
    `Example`s, read as training rows are. TRL's trainers append the EOS token's text to text responses when they
    prepare a dataset (`chosen: " yes<eos>"`); `eos_text` is taken off again, since a probe ends every response
    with the EOS token itself (else it would score two)."""
    if dataset is None:
        return []
    if isinstance(dataset, dict):  # several eval datasets: the first
        dataset = next(iter(dataset.values()), None)
        if dataset is None:
            return []
    try:
        count = len(dataset)
    except TypeError:
        raise LdynError(f"the trainer's {name} has no length (an IterableDataset): pass probes explicitly") from None
    rows = [dataset[i] for i in range(count if not limit else min(limit, count))]
    if rows and not any(k in rows[0] for k in ("prompt", "chosen", "completion", "text", "messages")):
        raise LdynError(
            f"the trainer's {name} holds no text fields (only {', '.join(sorted(rows[0]))}): pass probes explicitly, "
            "e.g. LearningDynamicsCallback('probes.jsonl') or a datasets.Dataset with prompt/chosen/rejected"
        )
    if rows and "label" in rows[0] and "completion" in rows[0]:
        rows = _pair_unpaired(rows)
    examples = []
    for i, row in enumerate(rows):
        e = example_from_row(row, name, i + 1, f"{'eval' if name == 'eval_dataset' else 'train'}/{i}")
        if eos_text:
            e = replace(e, responses={k: _without_suffix(v, eos_text) for k, v in e.responses.items()})
        if "chosen" in e.responses:
            examples.append(e)
    return examples


def _without_suffix(response, suffix: str):
    return response[: -len(suffix)] if isinstance(response, str) and response.endswith(suffix) else response


def _pair_unpaired(rows: list[dict]) -> list[dict]:
    """KTO's unpaired rows (prompt, completion, label) as one row per prompt: a desirable completion is its
    `chosen`, an undesirable one its `rejected` (the first of each); a prompt with no desirable completion has no
    `chosen` to measure the argmax along and is left out."""
    merged: dict[str, dict] = {}
    for row in rows:
        key = repr(row["prompt"])
        entry = merged.setdefault(key, {"prompt": row["prompt"]})
        entry.setdefault("chosen" if row["label"] else "rejected", row["completion"])
    return [e for e in merged.values() if "chosen" in e]


def _shuffled(response, rng: random.Random):
    """A response with its words shuffled, in its own form (text, or an assistant message)."""
    words = shuffle_words(text_of(response), rng)
    return [{"role": "assistant", "content": words}] if is_messages(response) else words


def probe_rows(
    train_dataset, eval_dataset, n: int, held_out: int, seed: int, eos_text: str | None = None
) -> tuple[list[dict], dict]:
    """Rows in the paper authors' format (`prompt`, `chosen`, `rejected` where the data has it, and the derived
    types) for the first `n` training prompts and the first `held_out` eval prompts, with a report of what they
    are for data.json (`eos_text`: as `dataset_rows`)."""
    train = dataset_rows(train_dataset, "train_dataset", n + POOL if n else 0, eos_text)
    if not train:
        raise LdynError(
            "the trainer's train_dataset has no rows with a response to probe (chosen, completion or an assistant "
            "turn): pass probes explicitly, e.g. LearningDynamicsCallback('probes.jsonl') or a datasets.Dataset "
            "with prompt/chosen/rejected"
        )
    probed = train[:n] if n else train
    spare = train[len(probed) :]  # training rows not probed: irr_test's source without an eval split
    held = dataset_rows(eval_dataset, "eval_dataset", held_out + POOL, eos_text)
    unseen = held or spare
    held = held[:held_out]
    rng = random.Random(seed)
    rows = []
    for group in (probed, held):
        order = list(range(len(group)))
        rng.shuffle(order)
        other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # never itself
        for i, e in enumerate(group):
            row = {"id": e.id, "prompt": e.prompt, **e.responses}
            chosen = e.responses["chosen"]
            if group is probed:
                row["irr_train"] = probed[other[i]].responses["chosen"] if len(probed) > 1 else None
            else:  # a held-out prompt: the response to a trained one
                row["irr_train"] = probed[rng.randrange(len(probed))].responses["chosen"]
            pool = [u for u in unseen if u.id != e.id]
            row["irr_test"] = pool[rng.randrange(len(pool))].responses["chosen"] if pool else None
            row["random_permute"] = _shuffled(chosen, rng)
            row["random_nonhum"] = _shuffled(row["irr_test"], rng) if row["irr_test"] is not None else None
            rows.append({k: v for k, v in row.items() if v is not None})
    report = {
        "probe_source": "the host trainer's data",
        "probe_trained": [e.id for e in probed],
        "probe_held_out": [e.id for e in held],
        "irr_test_from": "eval_dataset" if eval_dataset is not None and unseen is not spare else "unprobed train rows",
    }
    return rows, report


def available_types(rows: list[dict]) -> list[str]:
    """The response types every row has (the ones a probe set of these rows can ask for)."""
    common = set(rows[0]) - {"id", "prompt"}
    for row in rows[1:]:
        common &= set(row)
    order = ("chosen", "rejected", *ROLLOUT_TYPES, *DERIVED)
    return [t for t in order if t in common] + sorted(common - set(order))


def compare_formats(trainer, probe: Example, template: str) -> None:
    """One warning line where conversational training meets text probes (or the reverse) under template="auto",
    which renders the two differently."""
    if trainer is None or template != "auto":
        return
    try:
        trained = dataset_rows(trainer.train_dataset, "train_dataset", 1)
    except LdynError:  # token ids only: nothing to compare
        return
    if trained and is_messages(trained[0].prompt) != is_messages(probe.prompt):
        kinds = ("conversational", "text") if is_messages(trained[0].prompt) else ("text", "conversational")
        warn(
            f"the trainer trains on {kinds[0]} rows but the probes are {kinds[1]}: they are rendered "
            "differently (template='chat' renders text probes with the chat template too)"
        )
