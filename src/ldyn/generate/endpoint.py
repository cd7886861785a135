"""An OpenAI-compatible chat endpoint ($LDYN_JUDGE_URL style: POST <url>/chat/completions, bearer key), with the
reliability every caller needs: bounded retries with backoff, `Retry-After`, no retry of a request the server calls
wrong, a total time limit, and every failed attempt's reason kept. Used by the judge and by `ldyn probes build`."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

# a dropped or cut connection, a timeout, or a malformed answer: asked again
RETRIED = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, KeyError, IndexError, TypeError)


class ChatEndpoint:
    """`complete(system, user)` -> the answer's text, or None when no usable answer came.

    Each request gets `retries` attempts: timeouts, dropped or truncated connections, 5xx, 408 and 429 answers, and
    answers that are malformed or empty (or that `accept` refuses) are retried with exponential backoff (a
    `Retry-After` header is honoured); other 4xx answers (a wrong key, model or request) are final at once. After
    `time_limit` seconds in all, no more requests are sent. Reasons of failed attempts are in `failures`.
    """

    def __init__(
        self,
        url: str,
        key: str,
        model: str,
        timeout: float = 60.0,
        retries: int = 3,
        temperature: float = 0.7,
        time_limit: float = float("inf"),
    ):
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")
        self.key, self.model, self.timeout, self.retries, self.temperature = key, model, timeout, retries, temperature
        self.id = f"endpoint:{model}"
        self.failures: list[str] = []
        self.deadline = time.monotonic() + time_limit

    def complete(self, system: str, user: str, accept=lambda text: True) -> str | None:
        body = {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": 1.0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        for attempt in range(self.retries):
            if time.monotonic() >= self.deadline:
                self.failures.append("time limit: the total time limit was reached")
                return None
            try:
                answer = self._post(body)
            except urllib.error.HTTPError as e:
                self.failures.append(f"HTTPError: {e.code} {e.reason}")
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    return None  # the request itself is wrong: asking again gives the same answer
                self._wait(attempt, e.headers.get("Retry-After") if e.headers else None)
                continue
            except RETRIED as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                self._wait(attempt)
                continue
            if accept(answer):
                return answer
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
        if not isinstance(content, str) or not content.strip():
            raise TypeError(f"the answer's content is {content!r}, not text")
        return content
