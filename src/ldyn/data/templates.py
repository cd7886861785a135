"""From a prompt and its responses to the text the tokenizer sees: `data.template`.

- `hh` -- the paper's text format: texts as they are; a conversation as an HH dialogue
  "\\n\\nHuman: …\\n\\nAssistant: …\\n\\nAssistant:" whose responses follow the last marker after a space (as the HH
  split keeps them). The paper's recipes use it.
- `chat` -- the tokenizer's chat template, as TRL applies it: the prompt rendered with the generation prompt, each
  response the rest of the whole conversation's rendering, ending at the template's end-of-turn when that is the
  EOS token (the EOS itself is appended at tokenisation, as for every template). A text prompt becomes one user
  turn (an HH dialogue its turns), a text response one assistant turn.
- `auto` (the default) -- `chat` for conversational rows, `hh` for text rows.
- a string with `{prompt}` -- the prompt's text put in it (a conversation must be one user turn), responses as
  they are: "Human: {prompt}\\nAssistant:" is the paper's UltraFeedback format (with `truncation_mode: keep_start`).

Training, probing, on-policy sampling and the decomposition all render through `render`, so the same (prompt,
response) is always the same tokens.
"""

from __future__ import annotations

import re

from ldyn.data.formats import HH_ASSISTANT, Example, is_messages, text_of
from ldyn.errors import LdynError

NAMED = ("auto", "hh", "chat")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def check_template(template: str) -> None:
    if template not in NAMED and "{prompt}" not in template:
        raise LdynError(
            f"must be one of {', '.join(NAMED)} or a string with {{prompt}} in it, got {template!r}",
            field="data.template",
        )


def render(tokenizer, template: str, example: Example) -> tuple[str, dict[str, str]]:
    """(prompt text, {name: response text without EOS}) of `example` under `template`."""
    kind = resolve(template, example)
    try:
        if kind == "chat":
            return _chat(tokenizer, example)
        if kind == "hh":
            return _hh_prompt(example.prompt), {k: _hh_response(v) for k, v in example.responses.items()}
        return template.replace("{prompt}", _single_turn(example.prompt)), {
            k: text_of(v) for k, v in example.responses.items()
        }
    except LdynError as e:
        raise LdynError(e.message, file=example.file or None, line=example.line, field=e.field) from None


def resolve(template: str, example: Example) -> str:
    """What `template` means for this row: "chat", "hh" or the template string itself (`auto` decides per row)."""
    if example.prompt == "":  # language-modelling text: no prompt to put in a template
        return "hh"
    if template == "auto":
        conversational = is_messages(example.prompt) or any(is_messages(r) for r in example.responses.values())
        return "chat" if conversational else "hh"
    return template


def render_prompt(tokenizer, template: str, prompt: str | list[dict]) -> str:
    """The prompt's text alone (what a sampler is given)."""
    return render(tokenizer, template, Example("", prompt, {}))[0]


# ---------------------------------------------------------------- hh


def _hh_prompt(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    names = {"user": "Human", "assistant": "Assistant"}
    # a system turn goes first, as plain text
    turns = (f"\n\n{names[m['role']]}: {m['content']}" if m["role"] in names else str(m["content"]) for m in prompt)
    return "".join(turns) + HH_ASSISTANT


def _hh_response(response) -> str:
    return response if isinstance(response, str) else " " + text_of(response)


# ---------------------------------------------------------------- a template string


def _single_turn(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m["role"] != "system"]
    if len(users) != 1 or users[0]["role"] != "user":
        raise LdynError(
            f"a template string takes one user turn, and this prompt has {len(prompt)} turns: use "
            "data.template=chat or hh",
            field="prompt",
        )
    return str(users[0]["content"])


# ---------------------------------------------------------------- chat


def as_turns(prompt) -> list[dict]:
    """A prompt as messages: an HH dialogue split into its turns, any other text one user turn."""
    if not isinstance(prompt, str):
        return prompt
    if not _HH_TURN.search(prompt):
        return [{"role": "user", "content": prompt.strip()}]
    parts = _HH_TURN.split(prompt)  # [before, role, text, role, text, ...]
    turns = [
        {"role": "user" if role == "Human" else "assistant", "content": text.strip()}
        for role, text in zip(parts[1::2], parts[2::2])
    ]
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()  # the final "Assistant:" is the generation prompt
    if parts[0].strip():
        turns.insert(0, {"role": "system", "content": parts[0].strip()})
    return turns


def _chat(tokenizer, example: Example) -> tuple[str, dict[str, str]]:
    if not getattr(tokenizer, "chat_template", None):
        raise LdynError(
            "data.template=chat, but this model's tokenizer has no chat template: use data.template=hh "
            "or a template string",
            field="data.template",
        )
    turns = as_turns(example.prompt)
    if turns[-1]["role"] == "assistant":
        raise LdynError("a chat prompt must end with a user turn, not an assistant turn", field="prompt")
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    whole = {}
    for name, response in example.responses.items():
        reply = response if isinstance(response, list) else [{"role": "assistant", "content": response.strip()}]
        whole[name] = tokenizer.apply_chat_template(turns + reply, tokenize=False)
    for text in whole.values():  # some templates render the prompt alone differently (TRL keeps the common prefix)
        n = 0
        while n < min(len(prompt), len(text)) and prompt[n] == text[n]:
            n += 1
        prompt = prompt[:n]
    return prompt, {name: _until_eos(text[len(prompt) :], tokenizer.eos_token) for name, text in whole.items()}


def _until_eos(text: str, eos: str | None) -> str:
    """The response up to its end-of-turn, when the template closes turns with the EOS token (which tokenisation
    appends to every response); the template's text after it (a newline) is not part of the response."""
    if eos:
        i = text.rfind(eos)
        if i >= 0 and not text[i + len(eos) :].strip():
            return text[:i]
    return text
