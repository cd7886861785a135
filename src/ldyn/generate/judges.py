"""Judges: which of two responses to a prompt is more helpful. Used by the win rate (`paper/winrate.py`) and by
on-policy training that ranks two samples (`sample.rank=judge`).

- `LocalJudge`: any causal LM; compares the log-probabilities of " A" and " B" after "More helpful:", so it always
  answers.
- `EndpointJudge`: an OpenAI-compatible `/chat/completions` API at $LDYN_JUDGE_URL with key $LDYN_JUDGE_KEY;
  timeouts, HTTP errors and unparseable answers are retried, then the judgement is None (invalid).

Both see the authors' prompt (`TEMPLATE`) and answer "A", "B", "tie" or None.
"""

from __future__ import annotations

import os
import re

from ldyn.config import JudgeConfig, ModelConfig
from ldyn.errors import LdynError
from ldyn.generate.endpoint import ChatEndpoint

SYSTEM = "You are a helpful assistant."
TEMPLATE = """For the following query to a chatbot, which response is more helpful?

Query: {prompt}

Response A:
{a}

Response B:
{b}

FIRST provide a one-sentence comparison of the two responses and explain which you feel is more helpful. \
SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. Your response should use \
the format:
Comparison: <one-sentence comparison and explanation>
More helpful: <"A" or "B">"""
TIE_WORDS = ("tie", "equal", "neither", "both", "same")


def judge_prompt(prompt: str, a: str, b: str) -> str:
    return TEMPLATE.format(prompt=prompt.strip(), a=a.strip(), b=b.strip())


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from a judge's answer (the text after its last ': ', as the authors parse); None if
    the answer says neither."""
    if not isinstance(text, str) or ":" not in text:
        return None
    tail = text.rsplit(":", 1)[1].strip().strip("\"'*.<> \n").strip()
    if tail.upper() in ("A", "B"):
        return tail.upper()
    if any(word in tail.lower() for word in TIE_WORDS):
        return "tie"
    match = re.fullmatch(r"(?:response\s+)?([AB])\b.*", tail, flags=re.IGNORECASE | re.DOTALL)
    return match.group(1).upper() if match else None


class LocalJudge:
    """A causal LM as judge: the answer is whichever of " A" and " B" it finds more likely after the prompt."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.id = model, tokenizer, f"local:{name}"
        self.letters = [tokenizer.encode(f" {c}", add_special_tokens=False)[-1] for c in "AB"]

    def prefer(self, prompt: str, a: str, b: str) -> str:
        import torch

        # the comparison line is given, so that the next token is the letter
        text = (
            f"{SYSTEM}\n\n{judge_prompt(prompt, a, b)}\n\nComparison: both responses answer the query.\nMore helpful:"
        )
        ids = self.tokenizer(text, return_tensors="pt").input_ids.to(next(self.model.parameters()).device)
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, -1].float()
        la, lb = logits[self.letters].tolist()
        return "tie" if la == lb else ("A" if la > lb else "B")


class EndpointJudge(ChatEndpoint):
    """An OpenAI-compatible chat endpoint as judge (`endpoint.ChatEndpoint`: retries, Retry-After, time limit); an
    answer that says neither A nor B is retried like a failed request. None after the retries: no verdict, and the
    callers do not store it as final, so the next run asks again."""

    def prefer(self, prompt: str, a: str, b: str) -> str | None:
        answer = self.complete(SYSTEM, judge_prompt(prompt, a, b), accept=lambda text: parse_verdict(text) is not None)
        return None if answer is None else parse_verdict(answer)


def make_judge(cfg: JudgeConfig, seed: int = 0):
    if cfg.kind == "endpoint":
        url = os.environ.get("LDYN_JUDGE_URL")
        if not url:
            raise LdynError(
                "judge.kind=endpoint needs $LDYN_JUDGE_URL (e.g. https://api.openai.com/v1) and $LDYN_JUDGE_KEY"
            )
        key = os.environ.get("LDYN_JUDGE_KEY", "")
        return EndpointJudge(url, key, cfg.model, cfg.timeout, cfg.retries, time_limit=cfg.time_limit or float("inf"))
    from ldyn.models.load import load_model

    model, tokenizer = load_model(ModelConfig(cfg.model), seed)
    return LocalJudge(model, tokenizer, cfg.model)
