"""Win rate (the paper's Table 1): sample a response per held-out prompt from two checkpoints, ask a judge which is
more helpful, count.

- Responses are sampled (`do_sample`, top-k 50: the defaults of the paper's transformers) and cached per
  checkpoint in `responses_<label>_<key>.jsonl`, where the key identifies the checkpoint (its absolute path and its
  files' sizes and times) and the sampling settings (seed, max tokens), so only the same checkpoint sampled the same
  way reuses them.
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
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ldyn.config import JudgeConfig, RunConfig
from ldyn.errors import LdynError
from ldyn.generate.judges import make_judge
from ldyn.runtime.files import append_rows, read_rows, writable_file, writable_folder, write_atomically

MAX_CHARS = 2000  # the authors skip a prompt when either response is longer


@dataclass
class HeldOut:
    start: int = 0  # the first held-out pair, counted as the compared runs load their training data
    n: int = 32  # how many prompts
    split: str = ""  # the split to read ("" = the compared run's data.split)


@dataclass
class WinrateSpec:
    """A suite's `winrate:` section."""

    pairs: list[list[str]] = field(default_factory=list)  # [[RUN/STAGE, RUN/STAGE], ...]: A against B
    prompts: HeldOut = field(default_factory=HeldOut)
    max_new_tokens: int = 64  # length of each sampled response
    both_orders: bool = True  # judge A/B and B/A; a split verdict is a tie


# ---------------------------------------------------------------- sampling responses from a checkpoint


def sample_responses(
    checkpoint: str,
    prompts: list[str],
    cache: Path,
    *,
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    template: str = "hh",
) -> list[str]:
    """One sampled response per prompt from `checkpoint` (a model name or directory), the prompt rendered by
    `template`; cached in `cache`."""
    done = {}
    for row in read_rows(cache):  # a cached response counts only for the same prompt at the same index
        i = row.get("index")
        if isinstance(i, int) and 0 <= i < len(prompts) and row.get("prompt") == prompts[i]:
            done[i] = row["response"]
    todo = [i for i in range(len(prompts)) if i not in done]
    if todo:
        from ldyn.generate.sampling import sample_texts

        samples = sample_texts(
            checkpoint,
            [prompts[i] for i in todo],
            seed=seed,
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            batch_size=batch_size,
            top_k=50,
            desc=f"sample {Path(checkpoint).name}",
            template=template,
        )
        for j, text in samples:
            done[todo[j]] = text
            append_rows(cache, [{"index": todo[j], "prompt": prompts[todo[j]], "response": text}])
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
    failures: dict[str, int] = field(default_factory=dict)  # why attempts failed (reason -> count); asked again


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float] | tuple[None, None]:
    if n == 0:
        return None, None
    p = wins / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def _key(judge_id: str, prompt: str, first: str, second: str) -> str:
    return hashlib.sha1(json.dumps([judge_id, prompt, first, second]).encode()).hexdigest()


class CachedJudge:
    """A judge whose every judgement is appended to `cache` as it is made and read back instead of asked again."""

    def __init__(self, judge, cache: Path, labels: tuple[str, str]):
        self.judge, self.cache, self.labels = judge, cache, labels
        # a judgement that failed (verdict null) is not final: this run asks again
        self.known = {row["key"]: row["verdict"] for row in read_rows(cache) if row.get("verdict") is not None}
        self.first_shown: list[bool] = []  # per single decisive judgement: did it prefer the response shown first?
        self.failures: dict[str, int] = {}  # why judgements failed: reason -> attempts

    def ask(self, key: str, i: int, prompt: str, first: str, second: str, swapped: bool) -> None:
        seen = len(getattr(self.judge, "failures", []))
        verdict = self.judge.prefer(prompt, first, second)
        reasons = getattr(self.judge, "failures", [])[seen:]
        for reason in reasons:
            kind, _, detail = reason.partition(":")
            if kind == "HTTPError":  # the status code tells a wrong request from a busy server
                kind += " " + (detail.split() or ["?"])[0]
            self.failures[kind] = self.failures.get(kind, 0) + 1
        row = {"key": key, "judge": self.judge.id, "index": i, "shown_first": self.labels[swapped], "verdict": verdict}
        append_rows(self.cache, [row | ({"failures": reasons} if verdict is None else {})])
        self.known[key] = verdict

    def winner(self, i: int, prompt: str, a: str, b: str, swapped: bool) -> str | None:
        """The winner of one judgement ("a", "b", "tie" or None), with b shown first when `swapped`."""
        first, second = (b, a) if swapped else (a, b)
        key = _key(self.judge.id, prompt, first, second)
        if key not in self.known:
            self.ask(key, i, prompt, first, second, swapped)
        verdict = self.known[key]
        if verdict in ("A", "B"):
            self.first_shown.append(verdict == "A")
            return "a" if (verdict == "A") != swapped else "b"
        return "tie" if verdict == "tie" else None


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

    asked = CachedJudge(judge, cache, labels)
    counts = {"a": 0, "b": 0, "tie": 0, "invalid": 0, "skipped": 0, "inconsistent": 0}
    for i in tqdm(range(len(prompts)), desc=f"judge {labels[0]} vs {labels[1]}", unit="prompt"):
        if len(a[i]) > MAX_CHARS or len(b[i]) > MAX_CHARS:
            counts["skipped"] += 1
            continue
        orders = (False, True) if both_orders else (random.Random(f"{seed}/{i}").random() < 0.5,)
        winners = {asked.winner(i, prompts[i], a[i], b[i], swapped) for swapped in orders}
        if None in winners:
            counts["invalid"] += 1
        elif len(winners) == 1:
            counts[winners.pop()] += 1
        else:
            counts["tie"] += 1
            counts["inconsistent"] += winners == {"a", "b"}
    decided = counts["a"] + counts["b"]
    low, high = wilson(counts["a"], decided)
    shown = asked.first_shown
    return WinRate(
        a=labels[0],
        b=labels[1],
        judge=judge.id,
        prompts=len(prompts),
        wins_a=counts["a"],
        wins_b=counts["b"],
        ties=counts["tie"],
        invalid=counts["invalid"],
        skipped=counts["skipped"],
        win_rate=counts["a"] / decided if decided else None,
        low=low,
        high=high,
        inconsistent=counts["inconsistent"],
        first_shown=sum(shown) / len(shown) if shown else None,
        failures=dict(asked.failures),
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
    template: str = "hh",
) -> list[WinRate]:
    """Each (A, B) pair of checkpoint directories: sample (prompts rendered by `template`: `data/templates.py`),
    judge, and write winrate.json into `out`."""
    results = []
    for a, b in checkpoints:
        responses = [
            sample_responses(
                c,
                prompts,
                out / f"responses_{_label(c).replace('/', '_')}_{sampling_key(c, seed, max_new_tokens)}.jsonl",
                max_new_tokens=max_new_tokens,
                seed=seed,
                template=template,
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
    write_atomically(out / "winrate.json", json.dumps(rows, indent=2) + "\n")
    for row in rows:
        print(f"ldyn: {summary(row)}", file=sys.stderr)
    return results


def winrate_on_file(
    a: str,
    b: str,
    prompts_file: str,
    *,
    start: int,
    n: int,
    judge_cfg: JudgeConfig,
    out: str | Path,
    max_new_tokens: int = 64,
    seed: int = 0,
    both_orders: bool = True,
) -> Path:
    """`ldyn winrate`: checkpoints A and B on rows [start, start + n) of a JSONL file's `prompt` field; returns
    the path of winrate.json."""
    from ldyn.data.jsonl import read_jsonl, text_field

    out = writable_folder(out, "--out")  # before any model loads
    for name in ("winrate.json", "judgements.jsonl"):
        writable_file(out / name, "--out")
    rows = list(read_jsonl(prompts_file))[start : start + n]
    prompts = [text_field(row, "prompt", prompts_file, line) for line, row in rows]
    if not prompts:
        raise LdynError(f"no prompts from row {start + 1}", file=prompts_file)
    judge = make_judge(judge_cfg, seed)
    evaluate([(a, b)], prompts, judge, out, max_new_tokens=max_new_tokens, seed=seed, both_orders=both_orders)
    return out / "winrate.json"


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
    if r.get("failures"):
        reasons = ", ".join(f"{k} ×{n}" for k, n in sorted(r["failures"].items(), key=lambda kv: -kv[1]))
        bias += f"; failed attempts: {reasons} (unanswered judgements are asked again on the next run)"
    if r["win_rate"] is None:
        return f"{r['a']} vs {r['b']} ({r['judge']}): no decided pairs, {ties}{bias}"
    return (
        f"{r['a']} vs {r['b']} ({r['judge']}): {r['wins_a']}-{r['wins_b']}, {ties}, win rate of A "
        f"{r['win_rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]{bias}"
    )


def sampling_key(checkpoint: str, seed: int, max_new_tokens: int, max_prompt_tokens: int = 256) -> str:
    """8 hex digits that identify a checkpoint and the sampling settings: a local checkpoint by its absolute path and
    its files' sizes and modification times (so a retrained one is sampled anew), a model name by the name."""
    path = Path(checkpoint)
    identity: list = [checkpoint]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        identity = [str(path.resolve())] + [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    text = json.dumps([identity, seed, max_new_tokens, max_prompt_tokens])
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _label(checkpoint: str) -> str:
    """`runs/x/paper_extend/checkpoints/dpo` -> `paper_extend/dpo`; other paths: their last two parts."""
    parts = Path(checkpoint).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}/{parts[-1]}"
    return "/".join(parts[-2:]).replace("/", "_") if len(parts) > 1 else parts[-1]


# ---------------------------------------------------------------- in a suite


def check_suite_winrate(spec: WinrateSpec, cfgs: dict[str, RunConfig]) -> None:
    """Fail before any run starts if a suite's winrate section names an unknown run or stage."""
    if not spec.pairs:
        raise LdynError("a suite's winrate needs `pairs: [[RUN/STAGE, RUN/STAGE], ...]`")
    for pair in spec.pairs:
        if len(pair) != 2:
            raise LdynError(f"a winrate pair is [RUN/STAGE, RUN/STAGE], got {pair!r}")
        for item in pair:
            run, _, stage = item.partition("/")
            if run not in cfgs or stage not in [s.name for s in cfgs[run].stages]:
                raise LdynError(f"winrate: '{item}' is not RUN/STAGE of a run in this suite")


def suite_winrate(spec: WinrateSpec, cfgs: dict[str, RunConfig], root: Path) -> list[WinRate]:
    """Held-out prompts: pairs [start, start + n) of the first compared run's training data as its runs load it
    (empty rows skipped when data.skip_empty), or of its `split`."""
    from ldyn.data.formats import load_examples
    from ldyn.data.templates import render_prompt, resolve

    first = cfgs[spec.pairs[0][0].partition("/")[0]]
    start, n = spec.prompts.start, spec.prompts.n
    split = spec.prompts.split or first.data.split
    examples, _ = load_examples(first.data.train, split, start + n, skip_empty=True, seed=first.seed)
    template = first.data.template
    chat = any(resolve(template, e) == "chat" for e in examples)  # as the runs rendered them
    # the judge reads the prompt as text (an HH dialogue for chat data); the sampler renders it as the runs did
    prompts = [render_prompt(None, "hh" if chat else template, e.prompt) for e in examples[start:]]
    if not prompts:
        raise LdynError(f"winrate: no held-out prompts after pair {start}", file=first.data.train)
    judge = make_judge(first.judge, first.seed)
    checkpoints = [
        tuple(str(root / r.partition("/")[0] / "checkpoints" / r.partition("/")[2]) for r in pair)
        for pair in spec.pairs
    ]
    return evaluate(
        checkpoints,
        prompts,
        judge,
        root / "winrate",
        max_new_tokens=spec.max_new_tokens,
        seed=first.seed,
        both_orders=spec.both_orders,
        template="chat" if chat else "hh",
    )
