"""Offline tasks with a verifiable reward, and reward functions.

`arithmetic_rows` writes small arithmetic questions ("What is 7 + 5? Answer with the number only.") from a seeded
RNG, as rows of the preference-pair schema (`data/formats.py`), so that a GRPO stage samples from their prompts and
the probes track their responses:

- `prompt`: one user turn (a conversation, so `data.template=auto` renders it with the chat template), or the text
  alone with `conversational=False`;
- `chosen`: the correct result ("12"); `chosen_gptsemantic`: the same result rephrased ("The answer is 12.");
- `rejected`: a near miss (the result ± 1 or 2); `reject_gptsemantic`: it rephrased; `rejected_far`: the result ±
  10 (never negative when the result is not);
- `irr_train`: another question's correct result (a seeded derangement among rows whose results differ): what
  learning the other prompts does to this one (interference); `irr_hum`: an unrelated English sentence;
- `answer`: the result as an integer (metadata: not a response, and what `exact_number` checks against).

Difficulty knobs: `digits` (each operand has exactly that many digits), `operators` (drawn per position from
"+", "-", "*"; "*" binds first) and `terms` (operands per question). With two terms, a "-" puts the larger operand
first, so results stay ≥ 0.

A reward function has TRL's signature, `fn(prompts: list[str], completions: list[str], **row_fields) -> list[float]`:
one reward per completion, where prompts are the texts the model was given, completions the decoded samples, and
each further keyword is a row field as a list aligned with the completions (TRL passes every dataset column but the
prompt so). `load_reward` gives a built-in (`REWARDS`: exact_number, final_number, number_only) or a user's function
by import path "package.module:function"; `score` calls one and checks what it returns.
"""

from __future__ import annotations

import importlib
import inspect
import math
import random
import re
from collections.abc import Callable, Sequence

from ldyn.errors import LdynError, did_you_mean

OPERATORS = ("+", "-", "*")
INSTRUCTION = "Answer with the number only."
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")

RewardFn = Callable[..., list[float]]


# ---------------------------------------------------------------- the arithmetic task


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 1, 10**digits - 1)


def evaluate(operands: Sequence[int], operators: Sequence[str]) -> int:
    """The value of operands[0] op[0] operands[1] ... with "*" before "+" and "-" (no eval)."""
    terms, signs = [operands[0]], []
    for op, value in zip(operators, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return terms[0] + sum(s * t for s, t in zip(signs, terms[1:]))


def _offset(rng: random.Random, answer: int, choices: Sequence[int]) -> int:
    """A wrong answer: answer + one of `choices`, flipped upwards when it would make a non-negative answer
    negative."""
    delta = rng.choice(choices)
    return answer + abs(delta) if answer >= 0 and answer + delta < 0 else answer + delta


def arithmetic_rows(
    n: int,
    seed: int = 0,
    *,
    digits: int = 1,
    operators: Sequence[str] = ("+",),
    terms: int = 2,
    conversational: bool = True,
    instruction: str = INSTRUCTION,
) -> list[dict]:
    """`n` arithmetic questions drawn by random.Random(seed), as rows of the schema in the module docstring; the
    same arguments give the same rows."""
    bad = [op for op in operators if op not in OPERATORS]
    if bad or not operators:
        raise LdynError(f"operators must be some of {', '.join(OPERATORS)}, got {list(operators)}", field="operators")
    if digits < 1 or terms < 2:
        raise LdynError(f"digits must be ≥ 1 and terms ≥ 2, got digits={digits}, terms={terms}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        values = [_operand(rng, digits) for _ in range(terms)]
        ops = [rng.choice(list(operators)) for _ in range(terms - 1)]
        if terms == 2 and ops[0] == "-" and values[0] < values[1]:
            values.reverse()
        answer = evaluate(values, ops)
        expression = " ".join([str(values[0])] + [f"{op} {v}" for op, v in zip(ops, values[1:])])
        question = f"What is {expression}? {instruction}".strip()
        near, far = _offset(rng, answer, (-2, -1, 1, 2)), _offset(rng, answer, (-10, 10))
        rows.append(
            {
                "id": f"arith-{seed}-{i:04d}",
                "prompt": [{"role": "user", "content": question}] if conversational else question,
                "chosen": str(answer),
                "rejected": str(near),
                "chosen_gptsemantic": f"The answer is {answer}.",
                "reject_gptsemantic": f"The answer is {near}.",
                "rejected_far": str(far),
                "answer": answer,
            }
        )
    _add_unrelated(rows, random.Random(f"{seed}/unrelated"))
    return rows


UNRELATED = (
    "The river was high after the spring rain.",
    "She painted the fence a pale shade of green.",
    "Our train leaves the station at noon.",
    "Bread rises faster in a warm kitchen.",
    "The library closes early on Sundays.",
    "He tuned the old guitar before the concert.",
    "Snow covered the hills by morning.",
    "The museum added a new wing last year.",
)


def _add_unrelated(rows: list[dict], rng: random.Random) -> None:
    """Each row's `irr_train` (the result of another row with a different result, drawn by `rng`; none when every
    result is the same within 64 draws) and `irr_hum` (one of `UNRELATED`)."""
    for row in rows:
        for _ in range(64):  # a draw with the same result is drawn again
            other = rows[rng.randrange(len(rows))]
            if other["answer"] != row["answer"]:
                row["irr_train"] = other["chosen"]
                break
        row["irr_hum"] = rng.choice(UNRELATED)


# ---------------------------------------------------------------- rewards


def first_number(text: str) -> float | None:
    """The first number in `text` ("-3", "1,024", "2.5"; thousands commas dropped), or None."""
    match = _NUMBER.search(text)
    return float(match.group().replace(",", "")) if match else None


def exact_number(prompts: list[str], completions: list[str], *, answer: list, **row_fields) -> list[float]:
    """1.0 where the first number in the completion equals the row's `answer`, else 0.0."""
    out = []
    for completion, target in zip(completions, answer):
        value = first_number(completion)
        out.append(1.0 if value is not None and math.isclose(value, float(target)) else 0.0)
    return out


def final_number(prompts: list[str], completions: list[str], *, answer: list, **row_fields) -> list[float]:
    """1.0 where the last number in the completion equals the row's `answer` (so "7 + 5 = 12" counts), else 0.0."""
    out = []
    for completion, target in zip(completions, answer):
        found = _NUMBER.findall(completion)
        value = float(found[-1].replace(",", "")) if found else None
        out.append(1.0 if value is not None and math.isclose(value, float(target)) else 0.0)
    return out


def number_only(prompts: list[str], completions: list[str], **row_fields) -> list[float]:
    """A format reward: 1.0 where the completion is a number and nothing else (a final full stop allowed), else 0."""
    return [1.0 if _NUMBER.fullmatch(c.strip().removesuffix(".")) else 0.0 for c in completions]


REWARDS: dict[str, RewardFn] = {"exact_number": exact_number, "final_number": final_number, "number_only": number_only}


def load_reward(spec: str) -> RewardFn:
    """A reward function: a built-in name (`REWARDS`) or an import path "package.module:function" of a callable
    with the signature in the module docstring; anything else is an LdynError naming `spec`."""
    if ":" not in spec:
        if spec in REWARDS:
            return REWARDS[spec]
        raise LdynError(
            f"unknown reward '{spec}'{did_you_mean(spec, REWARDS)}; a user's reward is 'package.module:function'",
            field="reward",
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LdynError(f"reward '{spec}': an import path is 'package.module:function'", field="reward")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LdynError(f"reward '{spec}': cannot import module '{module_name}' ({e})", field="reward") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise LdynError(f"reward '{spec}': module '{module_name}' has no '{attr}'", field="reward")
        fn = getattr(fn, part)
    if not callable(fn):
        raise LdynError(f"reward '{spec}': '{attr}' is not callable", field="reward")
    return fn


def reward_name(fn: RewardFn) -> str:
    """How errors and logs name a reward function: its built-in name or its import path."""
    for name, builtin in REWARDS.items():
        if fn is builtin:
            return name
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def score(fn: RewardFn, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
    """`fn`'s rewards for completions of `rows` (one row per completion, aligned), each row field but `prompt`
    passed as a list; a result that is not one finite number per completion is an LdynError naming `fn`."""
    if not len(prompts) == len(completions) == len(rows):
        raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions and {len(rows)} rows")
    keys = [k for k in (rows[0] if rows else {}) if k not in ("prompt", "completion")]
    fields = {k: [r.get(k) for r in rows] for k in keys}
    name = reward_name(fn)
    try:
        inspect.signature(fn).bind(prompts, completions, **fields)
    except TypeError as e:
        raise LdynError(f"reward '{name}' cannot be called as fn(prompts, completions, **row_fields): {e}") from None
    except ValueError:  # no signature to inspect (a builtin): just call it
        pass
    out = fn(prompts, completions, **fields)
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        raise LdynError(f"reward '{name}' must return a list of numbers, got {type(out).__name__}") from None
    if len(values) != len(completions):
        raise LdynError(f"reward '{name}' returned {len(values)} rewards for {len(completions)} completions")
    if not all(math.isfinite(v) for v in values):
        raise LdynError(f"reward '{name}' returned a value that is not a finite number")
    return values
