"""The response types of a built probe set: which are generated and which made by a rule, what each is made from,
the order a probe file lists them in, and the instructions that ask a generator for the generated ones.

The instructions are the authors' (paper.md §5) unless `--instructions FILE.yaml` replaces some of them: a YAML
mapping of field -> prompt template, whose placeholders are filled per row (`PLACEHOLDERS`). A template is checked
before anything is generated: a field that is not generated, a placeholder that is not known, braces that do not
pair, or a template without the placeholder its field is made from (the generator would never see the response it
should rephrase) is one error naming the file, line and field.
"""

from __future__ import annotations

import string
from pathlib import Path

from ldyn.data.jsonl import json_type
from ldyn.errors import LdynError, did_you_mean

SYSTEM = "You are a helpful assistant."
INSTRUCTIONS = {  # the authors' gpt-3.5-turbo requests (paper.md §5), one user message each
    "chosen_gptsemantic": "Please rephrase the following response using different words but keeping exactly the same "
    "meaning. Return only the rephrased response.\n\nResponse: {chosen}",
    "reject_gptsemantic": "Please rephrase the following response using different words but keeping exactly the same "
    "meaning. Return only the rephrased response.\n\nResponse: {rejected}",
    "chosen_gptformat": "Please rewrite the following response so that its meaning changes as much as possible while "
    "its format and structure stay the same. Return only the rewritten response.\n\nResponse: {chosen}",
    "reject_gptformat": "Please rewrite the following response so that its meaning changes as much as possible while "
    "its format and structure stay the same. Return only the rewritten response.\n\nResponse: {rejected}",
    "irr_hum": "Please write a random sentence with {words} words. Return only the sentence.",
}
GENERATED = (*INSTRUCTIONS, "chosen_initial")
SOURCE = {
    "chosen_gptsemantic": "chosen",
    "reject_gptsemantic": "rejected",
    "chosen_gptformat": "chosen",
    "reject_gptformat": "rejected",
    "random_permute": "chosen",
    "irr_hum": "chosen",
    "chosen_initial": "chosen",
    "random_nonhum": "irr_test",
}
ORDER = (
    "chosen",
    "chosen_initial",
    "chosen_gptsemantic",
    "chosen_gptformat",
    "rejected",
    "reject_gptsemantic",
    "reject_gptformat",
    "irr_train",
    "irr_test",
    "irr_hum",
    "random_permute",
    "random_nonhum",
)
RULES = {
    "irr_train": "chosen of another probed prompt (a seeded derangement)",
    "irr_test": "chosen of a seeded random held-out pair",
    "random_permute": "the words of chosen, shuffled",
    "random_nonhum": "the words of irr_test, shuffled",
}
PLACEHOLDERS = {"chosen": "a", "rejected": "b", "words": 3, "prompt": "p"}  # with values to try a template on
NEEDS = {  # field -> (the placeholders one of which it needs, why)
    "chosen_gptsemantic": (("chosen",), "the generator would never see the response it rephrases"),
    "reject_gptsemantic": (("rejected",), "the generator would never see the response it rephrases"),
    "chosen_gptformat": (("chosen",), "the generator would never see the response it rewrites"),
    "reject_gptformat": (("rejected",), "the generator would never see the response it rewrites"),
    "irr_hum": (("words", "chosen"), "the sentence would not be as long as chosen"),
}


def read_instructions(path: str | Path) -> dict[str, str]:
    """A YAML mapping of field -> prompt template (`{chosen}`, `{rejected}`, `{words}`, `{prompt}`), each checked."""
    from ldyn.schema import read_yaml

    path = Path(path)
    try:
        path.read_text(encoding="utf-8")
    except OSError as e:
        raise LdynError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    except UnicodeDecodeError as e:
        raise LdynError(
            f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})", file=str(path)
        ) from None
    data = read_yaml(path)
    if not data:
        raise LdynError(
            "has no instructions: give `field: template` lines, e.g. chosen_gptsemantic: 'Rephrase: {chosen}'",
            file=str(path),
        )
    lines = getattr(data, "lines", {})
    return {str(k): check_instruction(str(k), v, dict(file=str(path), line=lines.get(k))) for k, v in data.items()}


def check_instruction(name: str, template, where: dict) -> str:
    """`template` if it can ask for field `name`; otherwise an error (at `where`: file and line) saying why."""
    if name not in INSTRUCTIONS:
        hint = " (it is sampled from --initial-model)" if name == "chosen_initial" else did_you_mean(name, INSTRUCTIONS)
        raise LdynError(f"unknown field '{name}'{hint}: instructions are for {', '.join(INSTRUCTIONS)}", **where)
    known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    if not isinstance(template, str):
        raise LdynError(f"must be a text with placeholders ({known}), got {json_type(template)}", **where, field=name)
    try:
        used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise LdynError(f"{e}: write a literal brace as {{{{ or }}}}", **where, field=name) from None
    unknown = [f for f in used if f not in PLACEHOLDERS]
    if unknown:
        message = f"unknown placeholder {{{unknown[0]}}}: the placeholders are {known} (write a literal brace as {{{{)"
        raise LdynError(message, **where, field=name)
    needed, why = NEEDS[name]
    if not set(used) & set(needed):
        raise LdynError(f"the template has no {{{needed[0]}}} placeholder: {why}", **where, field=name)
    try:
        template.format(**PLACEHOLDERS)
    except (ValueError, TypeError) as e:
        raise LdynError(f"cannot be filled in: {e}", **where, field=name) from None
    return template
