"""Judges: which of two responses to a prompt is more helpful. Used by the win rate (`paper/winrate.py`) and by
on-policy training that ranks two samples (`sample.rank=judge`).

- `LocalJudge`: any causal LM; compares the log-probabilities of " A" and " B" after "More helpful:", so it always
  answers.
- `EndpointJudge`: an OpenAI-compatible `/chat/completions` API at $LDYN_JUDGE_URL with key $LDYN_JUDGE_KEY;
  timeouts, HTTP errors and unparseable answers are retried, then the judgement is None (invalid).

Both see the authors' prompt (`TEMPLATE`) and answer "A", "B", "tie" or None.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request

from ldyn.config import JudgeConfig, ModelConfig
from ldyn.errors import LdynError

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


class EndpointJudge:
    """An OpenAI-compatible chat endpoint: POST {LDYN_JUDGE_URL}/chat/completions, bearer $LDYN_JUDGE_KEY.

    Each judgement gets `retries` attempts: timeouts, dropped or truncated connections, 5xx, 408 and 429 answers, and
    answers that are malformed, empty or say neither A nor B are retried with exponential backoff (a `Retry-After`
    header is honoured); other 4xx answers (a wrong key, model or request) are final at once. After `time_limit`
    seconds in all, no more requests are sent. A judgement that got no verdict is None, and its reasons are in
    `failures`; callers do not store None as final, so the next run asks again.
    """

    def __init__(self, url: str, key: str, model: str, timeout: float = 60.0, retries: int = 3,
                 temperature: float = 0.7, time_limit: float = float("inf")):  # fmt: skip
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")
        self.key, self.model, self.timeout, self.retries, self.temperature = key, model, timeout, retries, temperature
        self.id = f"endpoint:{model}"
        self.failures: list[str] = []  # why each failed attempt failed (timeouts, HTTP errors, malformed answers)
        self.deadline = time.monotonic() + time_limit

    def prefer(self, prompt: str, a: str, b: str) -> str | None:
        body = {"model": self.model, "temperature": self.temperature, "top_p": 1.0,
                "messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": judge_prompt(prompt, a, b)}]}  # fmt: skip
        for attempt in range(self.retries):
            if time.monotonic() >= self.deadline:
                self.failures.append("time limit: the judge's total time limit was reached")
                return None
            try:
                answer = self._post(body)
            except urllib.error.HTTPError as e:
                self.failures.append(f"HTTPError: {e.code} {e.reason}")
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    return None  # the request itself is wrong: asking again gives the same answer
                self._wait(attempt, e.headers.get("Retry-After") if e.headers else None)
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, KeyError, IndexError,
                    TypeError) as e:  # fmt: skip
                self.failures.append(f"{type(e).__name__}: {e}")
                self._wait(attempt)
                continue
            verdict = parse_verdict(answer)
            if verdict is not None:
                return verdict
            self.failures.append(f"unparseable answer: {answer[:80]!r}")
        return None

    def _wait(self, attempt: int, retry_after: str | None = None) -> None:
        """Backoff before the next attempt: the server's Retry-After (seconds) if given, else 0.2 s doubling to 2 s;
        never past the deadline."""
        try:
            seconds = float(retry_after) if retry_after is not None else min(0.2 * 2**attempt, 2.0)
        except ValueError:
            seconds = min(0.2 * 2**attempt, 2.0)
        time.sleep(max(0.0, min(seconds, 60.0, self.deadline - time.monotonic())))

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 -- a user-set URL
            data = json.loads(response.read().decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"the answer's content is {content!r}, not text")
        return content


def make_judge(cfg: JudgeConfig, seed: int = 0):
    if cfg.kind == "endpoint":
        url = os.environ.get("LDYN_JUDGE_URL")
        if not url:
            raise LdynError(
                "judge.kind=endpoint needs $LDYN_JUDGE_URL (e.g. https://api.openai.com/v1) and $LDYN_JUDGE_KEY"
            )
        return EndpointJudge(url, os.environ.get("LDYN_JUDGE_KEY", ""), cfg.model, cfg.timeout, cfg.retries,
                             time_limit=cfg.time_limit or float("inf"))  # fmt: skip
    from ldyn.models import load_model

    model, tokenizer = load_model(ModelConfig(cfg.model), seed)
    return LocalJudge(model, tokenizer, cfg.model)
