"""Win rate (the paper's Table 1): sample a response per held-out prompt from two checkpoints, ask a judge which is
more helpful, count.

- Responses are sampled (`do_sample`, top-k 50: the defaults of the paper's transformers) and cached per
  checkpoint in `responses_<label>.jsonl`, so a second evaluation of the same checkpoint reuses them.
- The judge sees the conversation and "Response A"/"Response B" in the authors' prompt and answers with a line
  `More helpful: <"A" or "B">`. By default each pair is judged in both orders and a response wins only if it is
  preferred both times; a split verdict counts as a tie, reported as `inconsistent` (the conservative rule of
  MT-bench, Zheng et al. 2023): a judge that always answers "A" then decides nothing instead of flipping coins.
  `first_shown` is the share of single decisive judgements that preferred the response shown first (0.5 for an
  unbiased judge). With `both_orders=False` each pair is judged once, in a seeded random order per prompt (the
  authors always showed the same model first), mapped back before counting. Pairs where a response exceeds 2,000
  characters are skipped, as in the authors' script.
- Two judges: `LocalJudge` (any causal LM: compares the log-probabilities of " A" and " B" after "More helpful:",
  so it always answers) and `EndpointJudge` (an OpenAI-compatible `/chat/completions` API at $LDYN_JUDGE_URL with
  key $LDYN_JUDGE_KEY; timeouts, HTTP errors and unparseable answers are retried, then counted as invalid).
- Every judgement is appended to `judgements.jsonl` as soon as it is made, keyed by the judge, the prompt and the
  two responses in the order shown; an interrupted evaluation resumes without asking again.

Win rate of A = wins_A / (wins_A + wins_B); ties and invalid answers are reported apart, with a 95% Wilson
interval on the win rate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

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
MAX_CHARS = 2000  # the authors skip a prompt when either response is longer
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
    """An OpenAI-compatible chat endpoint: POST {LDYN_JUDGE_URL}/chat/completions, bearer $LDYN_JUDGE_KEY."""

    def __init__(
        self, url: str, key: str, model: str, timeout: float = 60.0, retries: int = 3, temperature: float = 0.7
    ):
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")
        self.key, self.model, self.timeout, self.retries, self.temperature = key, model, timeout, retries, temperature
        self.id = f"endpoint:{model}"
        self.failures: list[str] = []  # why each failed attempt failed (timeouts, HTTP errors, malformed answers)

    def prefer(self, prompt: str, a: str, b: str) -> str | None:
        body = {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": 1.0,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": judge_prompt(prompt, a, b)},
            ],
        }
        for attempt in range(self.retries):
            try:
                answer = self._post(body)
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                time.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            verdict = parse_verdict(answer)
            if verdict is not None:
                return verdict
            self.failures.append(f"unparseable answer: {answer[:80]!r}")
        return None

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 -- a user-set URL
            data = json.loads(response.read().decode("utf-8"))
        return data["choices"][0]["message"]["content"]


def make_judge(cfg: JudgeConfig, seed: int = 0):
    if cfg.kind == "endpoint":
        url = os.environ.get("LDYN_JUDGE_URL")
        if not url:
            raise LdynError(
                "judge.kind=endpoint needs $LDYN_JUDGE_URL (e.g. https://api.openai.com/v1) and $LDYN_JUDGE_KEY"
            )
        return EndpointJudge(url, os.environ.get("LDYN_JUDGE_KEY", ""), cfg.model, cfg.timeout, cfg.retries)
    from ldyn.models import load_model

    model, tokenizer = load_model(ModelConfig(cfg.model), seed)
    return LocalJudge(model, tokenizer, cfg.model)


# ---------------------------------------------------------------- sampling responses from a checkpoint


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return rows


def _append(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sample_responses(
    checkpoint: str,
    prompts: list[str],
    cache: Path,
    *,
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 256,
    batch_size: int = 8,
    seed: int = 0,
) -> list[str]:
    """One sampled response per prompt from `checkpoint` (a model name or directory); cached in `cache`."""
    done = {}
    for row in _read_jsonl(cache):  # a cached response counts only for the same prompt at the same index
        i = row.get("index")
        if isinstance(i, int) and 0 <= i < len(prompts) and row.get("prompt") == prompts[i]:
            done[i] = row["response"]
    todo = [i for i in range(len(prompts)) if i not in done]
    if todo:
        import torch
        from tqdm.auto import tqdm

        from ldyn.models import load_model
        from ldyn.sampling import generate

        model, tokenizer = load_model(ModelConfig(checkpoint), seed)
        torch.manual_seed(seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        for start in tqdm(range(0, len(todo), batch_size), desc=f"sample {Path(checkpoint).name}", unit="batch"):
            chunk = todo[start : start + batch_size]
            ids = [tokenizer(prompts[i], add_special_tokens=False).input_ids[-max_prompt_tokens:] for i in chunk]
            out = generate(
                model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens=max_new_tokens, top_k=50
            )
            for i, tokens in zip(chunk, out):
                done[i] = tokenizer.decode(tokens, skip_special_tokens=True)
                _append(cache, {"index": i, "prompt": prompts[i], "response": done[i]})
    return [done[i] for i in range(len(prompts))]


# ---------------------------------------------------------------- judging


@dataclass
class WinRate:
    a: str
    b: str
    judge: str
    prompts: int
    wins_a: int
    wins_b: int
    ties: int
    invalid: int  # the judge gave no usable answer after its retries
    skipped: int  # a response longer than MAX_CHARS
    win_rate: float | None  # wins_a / (wins_a + wins_b)
    low: float | None  # 95% Wilson interval of the win rate
    high: float | None
    inconsistent: int = 0  # both orders judged and the verdicts disagree (counted among the ties)
    first_shown: float | None = None  # share of single decisive judgements preferring the response shown first


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float] | tuple[None, None]:
    if n == 0:
        return None, None
    p = wins / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def _key(judge_id: str, prompt: str, first: str, second: str) -> str:
    return hashlib.sha1(json.dumps([judge_id, prompt, first, second]).encode()).hexdigest()


def compare(
    prompts: list[str],
    a: list[str],
    b: list[str],
    judge,
    cache: Path,
    *,
    seed: int = 0,
    labels: tuple[str, str] = ("A", "B"),
    both_orders: bool = True,
) -> WinRate:
    """Judge a[i] against b[i] for every prompt, in both orders (or once, in a seeded random order); cached."""
    from tqdm.auto import tqdm

    known = {row["key"]: row["verdict"] for row in _read_jsonl(cache)}
    counts = {"a": 0, "b": 0, "tie": 0, "invalid": 0, "skipped": 0, "inconsistent": 0}
    first_shown = []  # per single decisive judgement: did it prefer the response shown first?
    cache.parent.mkdir(parents=True, exist_ok=True)

    def ask(i: int, swapped: bool) -> str | None:
        """The winner of one judgement ("a", "b", "tie" or None), with the response shown first per `swapped`."""
        first, second = (b[i], a[i]) if swapped else (a[i], b[i])
        key = _key(judge.id, prompts[i], first, second)
        if key not in known:
            known[key] = judge.prefer(prompts[i], first, second)
            _append(
                cache,
                {"key": key, "judge": judge.id, "index": i, "shown_first": labels[swapped], "verdict": known[key]},
            )
        verdict = known[key]
        if verdict in ("A", "B"):
            first_shown.append(verdict == "A")
            return "a" if (verdict == "A") != swapped else "b"
        return "tie" if verdict == "tie" else None

    for i in tqdm(range(len(prompts)), desc=f"judge {labels[0]} vs {labels[1]}", unit="prompt"):
        if len(a[i]) > MAX_CHARS or len(b[i]) > MAX_CHARS:
            counts["skipped"] += 1
            continue
        if both_orders:
            winners = {ask(i, False), ask(i, True)}
        else:
            winners = {ask(i, random.Random(f"{seed}/{i}").random() < 0.5)}
        if None in winners:
            counts["invalid"] += 1
        elif len(winners) == 1:
            counts[winners.pop()] += 1
        else:
            counts["tie"] += 1
            counts["inconsistent"] += winners == {"a", "b"}
    decided = counts["a"] + counts["b"]
    low, high = wilson(counts["a"], decided)
    return WinRate(
        labels[0],
        labels[1],
        judge.id,
        len(prompts),
        counts["a"],
        counts["b"],
        counts["tie"],
        counts["invalid"],
        counts["skipped"],
        counts["a"] / decided if decided else None,
        low,
        high,
        counts["inconsistent"],
        sum(first_shown) / len(first_shown) if first_shown else None,
    )


def evaluate(
    checkpoints: list[tuple[str, str]],
    prompts: list[str],
    judge,
    out: Path,
    *,
    max_new_tokens: int = 64,
    seed: int = 0,
    both_orders: bool = True,
) -> list[WinRate]:
    """Each (A, B) pair of checkpoint directories: sample, judge, and write winrate.json into `out`."""
    results = []
    for a, b in checkpoints:
        responses = [
            sample_responses(
                c,
                prompts,
                out / f"responses_{_label(c).replace('/', '_')}.jsonl",
                max_new_tokens=max_new_tokens,
                seed=seed,
            )
            for c in (a, b)
        ]
        results.append(
            compare(
                prompts,
                *responses,
                judge,
                out / "judgements.jsonl",
                seed=seed,
                labels=(_label(a), _label(b)),
                both_orders=both_orders,
            )
        )
    rows = [asdict(r) for r in results]
    (out / "winrate.json").write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        print(f"ldyn: {summary(row)}", file=sys.stderr)
    return results


def summary(r: dict) -> str:
    """One line for a result as written to winrate.json (the CLI prints it; the claims report quotes it)."""
    ties = f"{r['ties']} ties ({r.get('inconsistent', 0)} inconsistent across orders), {r['invalid']} invalid"
    if r.get("skipped"):
        ties += f", {r['skipped']} skipped"
    bias = (
        ""
        if r.get("first_shown") is None
        else f"; the judge preferred the first-shown response in {r['first_shown']:.0%} of its decisive answers"
    )
    if r["win_rate"] is None:
        return f"{r['a']} vs {r['b']} ({r['judge']}): no decided pairs, {ties}{bias}"
    return (
        f"{r['a']} vs {r['b']} ({r['judge']}): {r['wins_a']}-{r['wins_b']}, {ties}, win rate of A "
        f"{r['win_rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]{bias}"
    )


def _label(checkpoint: str) -> str:
    """`runs/x/paper_extend/checkpoints/dpo` -> `paper_extend/dpo`; other paths: their last two parts."""
    parts = Path(checkpoint).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}/{parts[-1]}"
    return "/".join(parts[-2:]).replace("/", "_") if len(parts) > 1 else parts[-1]


# ---------------------------------------------------------------- in a suite


def check_suite_winrate(spec: dict, cfgs: dict) -> None:
    """Fail before any run starts if a suite's winrate section names an unknown run or stage."""
    if not isinstance(spec, dict) or not isinstance(spec.get("pairs"), list):
        raise LdynError("a suite's winrate needs `pairs: [[RUN/STAGE, RUN/STAGE], ...]`")
    for pair in spec["pairs"]:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise LdynError(f"a winrate pair is [RUN/STAGE, RUN/STAGE], got {pair!r}")
        for item in pair:
            run, _, stage = str(item).partition("/")
            if run not in cfgs or stage not in [s.name for s in cfgs[run].stages]:
                raise LdynError(f"winrate: '{item}' is not RUN/STAGE of a run in this suite")


def suite_winrate(spec: dict, cfgs: dict, root: Path) -> list[WinRate]:
    """Held-out prompts: pairs [start, start + n) of the first compared run's training data as its runs load it
    (empty rows skipped when data.skip_empty), or of its `split`."""
    from ldyn.data.preference import load_pairs

    first = cfgs[str(spec["pairs"][0][0]).partition("/")[0]]
    where = spec.get("prompts") or {}
    start, n, split = int(where.get("start", 0)), int(where.get("n", 32)), str(where.get("split", first.data.split))
    pairs, _ = load_pairs(first.data.train, split, start + n, True, (), first.seed)
    prompts = [p.prompt for p in pairs[start:]]
    if not prompts:
        raise LdynError(f"winrate: no held-out prompts after pair {start}", file=first.data.train)
    judge = make_judge(first.judge, first.seed)
    checkpoints = [
        tuple(str(root / r.partition("/")[0] / "checkpoints" / r.partition("/")[2]) for r in pair)
        for pair in spec["pairs"]
    ]
    return evaluate(
        checkpoints,
        prompts,
        judge,
        root / "winrate",
        max_new_tokens=int(spec.get("max_new_tokens", 64)),
        seed=first.seed,
        both_orders=bool(spec.get("both_orders", True)),
    )
