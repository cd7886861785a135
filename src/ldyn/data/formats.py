"""Rows as the Hugging Face ecosystem hands them over: TRL's dataset formats, standard and conversational.

Every row becomes an `Example`: an id, a prompt and named responses. A prompt is a text or a list of messages
({"role", "content"}); a response is a text or a list of (assistant) messages. The formats, in TRL's names:

| format                      | fields                      | becomes                                              |
|-----------------------------|-----------------------------|------------------------------------------------------|
| language modelling          | `text` / `messages`         | an empty prompt and `chosen` = the text; for messages |
|                             |                             | the turns before the last assistant turn and that turn |
| prompt-only                 | `prompt`                    | a prompt without responses (on-policy stages sample)  |
| prompt-completion           | `prompt`, `completion`      | `chosen` = the completion (an SFT stage's target)     |
| preference, explicit prompt | `prompt`, `chosen`, `rejected` | as they are                                       |
| preference, implicit prompt | `chosen`, `rejected`        | the prompt is their shared start: HH dialogues split  |
|                             |                             | at the last "\\n\\nAssistant:" (the paper's code),      |
|                             |                             | other texts at their longest common prefix and message |
|                             |                             | lists at their common turns (TRL's `extract_prompt`)   |

Further text or message fields are further named responses (the probe types; SFT targets such as `irr_hum`). A
response given as a whole conversation (HuggingFaceH4/ultrafeedback_binarized repeats the user turn in `chosen`)
keeps its turns after the last user turn, and the turns before become the prompt. A conversation must be a
non-empty list of turns, each an object with a `role` (system, user, assistant or tool) and a string `content`;
anything else is an error naming the file, line, field and turn. Which fields a run needs is the
run's business (`require`): an SFT stage needs its target only, a DPO-family stage `chosen` and `rejected`.
`templates.py` turns prompts and responses into the text the tokenizer sees.

Sources: "embedded", a JSONL file, a `save_to_disk` folder or hub name of a Hugging Face dataset (`name:data_dir`
picks a subset), or rows in memory (a list of dicts or a `datasets.Dataset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ldyn.data.embedded import embedded_path, embedded_rows
from ldyn.data.jsonl import json_type, read_jsonl
from ldyn.errors import EmptyFieldError, LdynError, did_you_mean

HH_ASSISTANT = "\n\nAssistant:"
ROLES = ("system", "user", "assistant", "tool")  # TRL's conversational roles (a tool turn as chat templates have it)
NOT_RESPONSES = {"id", "split", "prompt", "text", "messages", "completion", "label", "chat_template_kwargs", "tools"}


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str | list[dict]  # x: a text, or the conversation so far as messages
    responses: dict[str, str | list[dict]]  # name (chosen, rejected, a probe type, ...) -> text or messages
    file: str = ""  # where the row came from, for errors
    line: int | None = None


def is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def text_of(value: str | list[dict]) -> str:
    """A response's text: a text as it is, messages as their assistant turns' contents joined by newlines."""
    if isinstance(value, str):
        return value
    return "\n".join(str(m["content"]) for m in value if m["role"] == "assistant")


def is_empty(value: str | list[dict]) -> bool:
    return not text_of(value).strip()


# ---------------------------------------------------------------- one row


def example_from_row(row: dict, file: str, line: int | None, default_id: str) -> Example:
    """One row in any format of the table above -> Example (responses may be empty: `require` decides)."""
    where = dict(file=file, line=line)
    if "label" in row and "completion" in row:
        raise LdynError(
            "unpaired preference rows (prompt, completion, label: KTO's format) are not supported; "
            "give pairs (prompt, chosen, rejected) or prompt-completion rows",
            **where,
            field="label",
        )
    _check_id(row, where)
    responses = {
        k: _value(row, k, where)
        for k, v in row.items()
        if k not in NOT_RESPONSES and (_looks_like_text(v) or k in ("chosen", "rejected"))
    }
    if "messages" in row:
        prompt, responses["chosen"] = _split_conversation(_value(row, "messages", where), where, "messages")
    elif "text" in row and "prompt" not in row:
        prompt, responses["chosen"] = "", _value(row, "text", where)
    elif "prompt" in row:
        prompt = _value(row, "prompt", where)
        if not (prompt.strip() if isinstance(prompt, str) else any(str(m["content"]).strip() for m in prompt)):
            raise EmptyFieldError("is empty", **where, field="prompt")
        if "completion" in row:
            responses["chosen"] = _value(row, "completion", where)
        prompt, responses = _conversations_to_turns(prompt, responses, where, "completion" in row)
    elif "chosen" in row and "rejected" in row:
        prompt, *pair = implicit_prompt(responses["chosen"], responses["rejected"], where)
        responses["chosen"], responses["rejected"] = pair
    else:
        have = ", ".join(sorted(row)) or "nothing"
        raise LdynError(
            f"no prompt: a row needs `prompt`, `messages`, `text`, or `chosen` and `rejected` (it has: {have})", **where
        )
    return Example(str(row.get("id", default_id)), prompt, responses, file, line)


def _looks_like_text(value) -> bool:
    """A further field that is a response: a text, or a list with a {role, ...} turn (checked as messages);
    anything else (a score, a list of tags) is the row's metadata."""
    return isinstance(value, str) or (
        isinstance(value, list) and any(isinstance(m, dict) and "role" in m for m in value)
    )


def _value(row: dict, name: str, where: dict):
    """The field `name` as a text or a checked list of messages (`messages` must be messages, `text` a text)."""
    value = row[name]
    if isinstance(value, str) and name != "messages":
        return value
    if isinstance(value, list) and name != "text":
        return check_messages(value, where, name)
    kinds = {"messages": "a list of messages ({role, content})", "text": "a string (a conversation goes in `messages`)"}
    what = kinds.get(name, "a string or a list of messages ({role, content})")
    raise LdynError(f"must be {what}, got {json_type(value)}", **where, field=name)


def check_messages(value: list, where: dict, name: str) -> list[dict]:
    """`value` if it is a conversation: a non-empty list of {role, content} turns, each role one of `ROLES` and each
    content a string; otherwise an error naming the field and the turn."""
    if not value:
        raise LdynError("is an empty list: a conversation needs at least one {role, content} turn", **where, field=name)
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise LdynError(f"turn {i} must be an object {{role, content}}, got {json_type(turn)}", **where, field=name)
        if "role" not in turn:
            raise LdynError(f"turn {i} has no 'role' (one of {', '.join(ROLES)})", **where, field=name)
        role = turn["role"]
        if role not in ROLES:
            hint = did_you_mean(str(role), ROLES)
            hint = hint if "did you mean" in hint else ""
            message = f"turn {i}: unknown role {role!r}{hint}; a role is one of {', '.join(ROLES)}"
            raise LdynError(message, **where, field=name)
        if "content" not in turn:
            raise LdynError(f"turn {i} ({role}) has no 'content'", **where, field=name)
        if not isinstance(turn["content"], str):
            got = json_type(turn["content"])
            raise LdynError(f"turn {i} ({role}): 'content' must be a string, got {got}", **where, field=name)
    return value


def _check_id(row: dict, where: dict) -> None:
    value = row.get("id")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise LdynError(f"must be a string or an integer, got {json_type(value)}", **where, field="id")


def _split_conversation(messages: list[dict], where: dict, name: str) -> tuple[list[dict], list[dict]]:
    """A conversation -> (the turns before its final assistant turns, those turns)."""
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    if end == len(messages):
        last = messages[-1]["role"]
        message = f"has no assistant turn at its end (its last turn is {last!r}): end it with the assistant's response"
        raise LdynError(message, **where, field=name)
    if end == 0:
        raise LdynError("has no turn before the assistant's", **where, field=name)
    return messages[:end], messages[end:]


def _conversations_to_turns(prompt, responses: dict, where: dict, completion: bool = False):
    """Responses given as whole conversations keep their final assistant turns; the turns before (the same in every
    response) become the prompt, in place of a text prompt that repeats them. `completion`: `chosen` is the row's
    `completion` (so errors name that field)."""
    turns = None
    for name, value in list(responses.items()):
        if isinstance(value, list) and any(m["role"] != "assistant" for m in value):
            field = "completion" if completion and name == "chosen" else name
            before, responses[name] = _split_conversation(value, where, field)
            if turns is not None and before != turns:
                raise LdynError(
                    "the conversation before the last assistant turn differs from the other responses'",
                    **where,
                    field=field,
                )
            turns = before
    return (turns if turns is not None else prompt), responses


def implicit_prompt(chosen, rejected, where: dict):
    """(prompt, chosen, rejected) from two responses that start with the same prompt."""
    if is_messages(chosen) != is_messages(rejected):
        raise LdynError(
            "must be the same kind as 'chosen' (both texts or both message lists)", **where, field="rejected"
        )
    if is_messages(chosen):
        prompt_c, chosen = _split_conversation(chosen, where, "chosen")
        prompt_r, rejected = _split_conversation(rejected, where, "rejected")
        if prompt_c != prompt_r:
            raise LdynError(
                "the conversation before the last assistant turn differs from the one in 'chosen'",
                **where,
                field="rejected",
            )
        return prompt_c, chosen, rejected
    if HH_ASSISTANT in chosen:
        prompt, chosen = split_hh(chosen, dict(where, field="chosen"))
        prompt_r, rejected = split_hh(rejected, dict(where, field="rejected"))
        if prompt_r != prompt:
            raise LdynError(
                "dialogue before the last assistant turn differs from the one in 'chosen'", **where, field="rejected"
            )
        return prompt, chosen, rejected
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n and chosen[n - 1] == " ":  # the responses keep their leading space, as TRL's extract_prompt does
        n -= 1
    if n == 0:
        raise LdynError("'chosen' and 'rejected' share no prompt: give a `prompt` field", **where, field="prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def split_hh(text: str, where: dict) -> tuple[str, str]:
    """'...\\n\\nAssistant: reply' -> ('...\\n\\nAssistant:', ' reply'), split at the *last* marker."""
    i = text.rfind(HH_ASSISTANT)
    if i < 0:
        raise LdynError(f"no '{HH_ASSISTANT.strip()}' turn to split the dialogue at", **where)
    return text[: i + len(HH_ASSISTANT)], text[i + len(HH_ASSISTANT) :]


# ---------------------------------------------------------------- what a run needs of a row


def require(example: Example, fields: dict[str, str], optional_empty: bool = False) -> Example:
    """Check that `example` has every field of `fields` (name -> why it is needed), non-empty; an empty one raises
    EmptyFieldError (skippable), a missing one LdynError naming the row and why the field is needed.
    `optional_empty` leaves empty responses that are not required out instead of keeping them."""
    where = dict(file=example.file, line=example.line)
    for name, why in fields.items():
        if name not in example.responses:
            have = ", ".join(example.responses) or "no responses"
            raise LdynError(f"missing: {why} (this row has: {have})", **where, field=name)
        if is_empty(example.responses[name]):
            raise EmptyFieldError("is empty", **where, field=name)
    if optional_empty:
        kept = {k: v for k, v in example.responses.items() if k in fields or not is_empty(v)}
        return Example(example.id, example.prompt, kept, example.file, example.line)
    return example


# ---------------------------------------------------------------- sources


def read_rows(source, split: str = "train", seed: int = 0, n: int = 0) -> tuple[list[tuple[int, dict]], str]:
    """(line or row number, row) pairs and a name for errors, from any source (see the module docstring); `n`
    limits a Hugging Face dataset to its first rows (0 = all)."""
    if not isinstance(source, str):
        return list(enumerate(source, start=1)), "<rows>"
    if source == "embedded":
        if split == "train":
            return embedded_rows(seed), str(embedded_path())
        return [(ln, r) for ln, r in read_jsonl(embedded_path()) if r["split"] == split], str(embedded_path())
    if is_file_source(source):
        return list(read_jsonl(source)), source
    return list(hf_rows(source, split, n)), f"{source}[{split}]"


def is_file_source(source) -> bool:
    """Whether `source` names a JSON Lines file (which has no splits), not embedded or a Hugging Face dataset."""
    return isinstance(source, str) and (Path(source).suffix in (".jsonl", ".json") or Path(source).is_file())


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
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise LdynError(
            f"cannot load Hugging Face dataset (split '{split}'): {first}. Without network access, "
            "pass a local JSONL or a dataset directory saved with `save_to_disk`",
            file=name,
        ) from None
    if n:
        ds = ds.select(range(min(n, len(ds))))
    return enumerate(ds, start=1)


def load_examples(
    source,
    split: str = "train",
    n: int = 0,
    fields: dict[str, str] | None = None,
    skip_empty: bool = False,
    seed: int = 0,
) -> tuple[list[Example], int]:
    """The first `n` examples (0 = all) of `source` that have `fields` (name -> why needed), and the number of rows
    skipped for an empty field (only with `skip_empty`; otherwise an empty field is an error naming its row)."""
    rows, file = read_rows(source, split, seed, n)
    examples, skipped = [], 0
    for index, (line, row) in enumerate(rows):
        try:
            examples.append(require(example_from_row(row, file, line, str(index)), fields or {}, optional_empty=True))
        except EmptyFieldError:
            if not skip_empty:
                raise
            skipped += 1
        if n and len(examples) == n:
            break
    if not examples:
        raise LdynError("no examples found" + (f" in split '{split}'" if source == "embedded" else ""), file=file)
    return examples, skipped
