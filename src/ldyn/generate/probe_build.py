"""`ldyn probes build DATA --out probes.jsonl`: a probe set in the paper authors' format from any preference data,
reproducibly; `ldyn probes check FILE`: how good its response types are.

The first `n` pairs of DATA are the probed prompts. For each, the file gets `prompt`, `chosen`, `rejected` and:

- rule-based, seeded (paper.md §5): `irr_train` (another probed prompt's chosen, by a derangement), `irr_test`
  (the chosen response of a held-out pair: pairs n, n+1, ... of DATA, or of `--test-split`), `random_permute` (the
  words of chosen, shuffled) and `random_nonhum` (the words of irr_test, shuffled);
- generated, by a local causal LM or an OpenAI-compatible endpoint ($LDYN_JUDGE_URL / $LDYN_JUDGE_KEY), with the
  authors' instructions as the default prompts (`INSTRUCTIONS`, overridable per field from a YAML file):
  `chosen_gptsemantic` / `reject_gptsemantic` (same meaning, other words), `chosen_gptformat` / `reject_gptformat`
  (same format, other meaning), `irr_hum` (a random sentence as long as chosen); and `chosen_initial`, a sample of
  the model under study (`--initial-model`) given the prompt, cut at the next "\\n\\nHuman:".

Every generation is appended to `<out>.cache.jsonl` as it is made, keyed by field, generator, instruction, source
text and seed, so an interrupted build continues without asking again; a failed generation is recorded with its
reasons but not kept as final (the next build asks again) and its field is left empty in that row (probing leaves an
empty response out). `<out>.provenance.json` says, per field, how it was made: generator, prompt, seed, time, and the
rows it failed on.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ldyn.data.embedded import shuffle_words
from ldyn.data.preference import load_pairs
from ldyn.data.templates import render_prompt
from ldyn.errors import LdynError
from ldyn.runtime.files import append_rows, read_rows, write_atomically

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


@dataclass
class BuildSettings:
    data: str  # preference pairs: JSONL, HF dataset, or "embedded"
    out: Path
    n: int = 64  # probed prompts: the first n pairs
    split: str = "train"
    test_split: str = ""  # irr_test from this split ("" = the pairs after the first n)
    seed: int = 0
    generator: str = "local"  # local | endpoint
    generator_model: str = "smollm2"  # local: model name or path; endpoint: the model name sent to the API
    initial_model: str = "smollm2"  # the model under study, for chosen_initial ("" = leave it out)
    instructions: dict = field(default_factory=dict)  # field -> template, overriding INSTRUCTIONS
    max_new_tokens: int = 96
    timeout: float = 60.0
    retries: int = 3


def rule_based(pairs, held_out, seed: int) -> list[dict]:
    """Rows with prompt, chosen, rejected and the four seeded rule-based types."""
    if not held_out:
        raise LdynError("irr_test needs held-out pairs: give more pairs than --n, or a --test-split")
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a derangement: never itself
    rows = []
    for i, p in enumerate(pairs):
        row = {"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
        row["irr_train"] = pairs[other[i]].chosen if len(pairs) > 1 else ""
        row["irr_test"] = held_out[rng.randrange(len(held_out))].chosen
        row["random_permute"] = shuffle_words(row["chosen"], rng)
        row["random_nonhum"] = shuffle_words(row["irr_test"], rng)
        rows.append(row)
    return rows


class GenerationCache:
    """Generations on disk, keyed by what made them; failures are kept with their reasons but are not final."""

    def __init__(self, path: Path):
        self.path = path
        self.done = {r["key"]: r["text"] for r in read_rows(path) if r.get("text") is not None}

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()

    def put(self, key: str, field_: str, row_id: str, text: str | None, reasons: list[str]) -> None:
        row = {"key": key, "field": field_, "id": row_id, "text": text}
        if text is None:
            row["failures"] = reasons
        append_rows(self.path, [row])
        if text is not None:
            self.done[key] = text


def generate_field(
    name: str, rows: list[dict], template: str, chat, cache: GenerationCache, seed: int, progress
) -> list[int]:
    """Fill `name` in every row by `chat` (cached); returns the indices of the rows it failed on."""
    requests, keys = [], []
    for row in rows:
        prompt = render_prompt(None, "hh", row["prompt"])  # a conversational prompt as its HH dialogue
        user = template.format(
            chosen=row["chosen"].strip(),
            rejected=row["rejected"].strip(),
            words=len(row["chosen"].split()),
            prompt=prompt,
        )
        keys.append(cache.key(name, chat.id, template, user, seed))
        requests.append((SYSTEM, user))
    todo = [i for i, k in enumerate(keys) if k not in cache.done]
    answers = _ask(chat, [requests[i] for i in todo], seed + int(keys[todo[0]][:6], 16) if todo else seed)
    for i, (text, reasons) in zip(todo, answers):
        cache.put(keys[i], name, rows[i]["id"], text, reasons)
        progress.update()
    failed = []
    for i, (row, k) in enumerate(zip(rows, keys)):
        row[name] = cache.done.get(k) or ""
        if k not in cache.done:
            failed.append(i)
    return failed


def _ask(chat, requests: list[tuple[str, str]], seed: int) -> list[tuple[str | None, list[str]]]:
    """(text or None, reasons of failed attempts) per request; a local model answers them in batches, seeded by
    `seed` (derived from what is asked, so a field's samples differ from another field's)."""
    if hasattr(chat, "complete_many"):
        texts = chat.complete_many(requests, seed=seed)
        return [(clean(t) or None, [] if clean(t) else ["empty answer"]) for t in texts]
    out = []
    for system, user in requests:
        seen = len(chat.failures)
        text = chat.complete(system, user)
        out.append((clean(text) if text else None, chat.failures[seen:]))
    return out


def clean(text: str | None) -> str:
    """A generated response as the probe file keeps it: surrounding quotes and a 'Rephrased response:' label gone."""
    if not text:
        return ""
    text = re.sub(r"^\s*(rephrased|rewritten)?\s*(response|sentence)\s*:\s*", "", text.strip(), flags=re.I)
    return text.strip().strip('"').strip()


def initial_samples(
    rows: list[dict], model_name: str, cache: GenerationCache, settings: BuildSettings, progress
) -> list[int]:
    """chosen_initial: the model under study's own sample given each prompt (as the HH text, no chat template), cut
    at the next "\\n\\nHuman:", as the authors made it; returns the rows it failed on (an empty sample)."""
    keys = [
        cache.key("chosen_initial", model_name, row["prompt"], settings.seed, settings.max_new_tokens) for row in rows
    ]
    todo = [i for i, k in enumerate(keys) if k not in cache.done]
    if todo:
        from ldyn.generate.sampling import sample_texts

        samples = sample_texts(
            model_name, [rows[i]["prompt"] for i in todo], seed=settings.seed, max_new_tokens=settings.max_new_tokens
        )
        for j, text in samples:
            i, text = todo[j], text.split("\n\nHuman:")[0]
            ok = bool(text.strip())
            cache.put(keys[i], "chosen_initial", rows[i]["id"], text if ok else None, [] if ok else ["empty sample"])
            progress.update()
    failed = []
    for i, (row, k) in enumerate(zip(rows, keys)):
        row["chosen_initial"] = cache.done.get(k, "")
        if k not in cache.done:
            failed.append(i)
    return failed


def make_chat(settings: BuildSettings):
    """The generator: a local causal LM, or the OpenAI-compatible endpoint at $LDYN_JUDGE_URL."""
    import os

    if settings.generator == "endpoint":
        from ldyn.generate.endpoint import ChatEndpoint

        url = os.environ.get("LDYN_JUDGE_URL")
        if not url:
            raise LdynError("--generator endpoint needs $LDYN_JUDGE_URL (and $LDYN_JUDGE_KEY)")
        return ChatEndpoint(
            url, os.environ.get("LDYN_JUDGE_KEY", ""), settings.generator_model, settings.timeout, settings.retries
        )
    if settings.generator != "local":
        raise LdynError(f"unknown generator '{settings.generator}' (choices: local, endpoint)", field="--generator")
    from ldyn.config import ModelConfig
    from ldyn.generate.sampling import LocalChat
    from ldyn.models.load import load_model

    model, tok = load_model(ModelConfig(settings.generator_model), settings.seed)
    return LocalChat(model, tok, settings.generator_model, settings.max_new_tokens, seed=settings.seed)


def build(settings: BuildSettings) -> Path:
    """Write the probe file, its cache and its provenance; returns the probe file's path."""
    from tqdm.auto import tqdm

    s = settings
    if s.n < 1:
        raise LdynError(f"must be >= 1, got {s.n}", field="--n")
    unknown = set(s.instructions) - set(INSTRUCTIONS)
    if unknown:
        raise LdynError(f"no instruction for '{sorted(unknown)[0]}' (fields: {', '.join(INSTRUCTIONS)})")
    pairs, _ = load_pairs(s.data, s.split, s.n if s.test_split else 5 * s.n, skip_empty=True, seed=s.seed)
    if len(pairs) < s.n:
        raise LdynError(f"--n {s.n} asks for more pairs than the data has ({len(pairs)})", file=s.data)
    held_out = load_pairs(s.data, s.test_split, 0, skip_empty=True)[0] if s.test_split else pairs[s.n :]
    rows = rule_based(pairs[: s.n], held_out, s.seed)
    cache, provenance = GenerationCache(s.out.with_name(s.out.name + ".cache.jsonl")), {}
    chat = make_chat(s)
    fields = [f for f in GENERATED if f != "chosen_initial" or s.initial_model]
    with tqdm(total=len(fields) * len(rows), desc="generate", unit="response") as progress:
        for name in fields:
            started = time.time()
            if name == "chosen_initial":
                failed = initial_samples(rows, s.initial_model, cache, s, progress)
                how = {"generator": f"local:{s.initial_model}", "prompt": "the probe prompt (sampled, cut at Human:)"}
            else:
                template = s.instructions.get(name, INSTRUCTIONS[name])
                failed = generate_field(name, rows, template, chat, cache, s.seed, progress)
                how = {"generator": chat.id, "system": SYSTEM, "prompt": template}
            provenance[name] = how | {
                "seed": s.seed,
                "started": _stamp(started),
                "finished": _stamp(time.time()),
                "failed_rows": [rows[i]["id"] for i in failed],
            }
    for name in ("irr_train", "irr_test", "random_permute", "random_nonhum"):
        provenance[name] = {"generator": "rule", "seed": s.seed, "rule": RULES[name]}
    _write(s.out, rows, provenance, s)
    return s.out


RULES = {
    "irr_train": "chosen of another probed prompt (a seeded derangement)",
    "irr_test": "chosen of a seeded random held-out pair",
    "random_permute": "the words of chosen, shuffled",
    "random_nonhum": "the words of irr_test, shuffled",
}


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write(out: Path, rows: list[dict], provenance: dict, s: BuildSettings) -> None:
    lines = (json.dumps({k: r[k] for k in ("id", "prompt", *ORDER) if k in r}) + "\n" for r in rows)
    write_atomically(out, "".join(lines))
    meta = {
        "data": s.data,
        "n": s.n,
        "split": s.split,
        "test_split": s.test_split or f"pairs after the first {s.n}",
        "fields": provenance,
    }
    out.with_name(out.name + ".provenance.json").write_text(json.dumps(meta, indent=2) + "\n")


# ---------------------------------------------------------------- ldyn probes check


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def overlap(a: str, b: str) -> float:
    """F1 of the word multisets of a and b: 1 for the same words (in any order), 0 for none in common."""
    wa, wb = Counter(words(a)), Counter(words(b))
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    p, r = common / sum(wa.values()), common / sum(wb.values())
    return 2 * p * r / (p + r)


def check(path: str | Path) -> dict:
    """Per response type: rows, empty, duplicates (the same text as another type of the row, or as the same type of
    another row), mean length in words relative to chosen, mean word overlap with its source, copies of the source;
    and the rows each generator failed on (from the provenance file beside it)."""
    from ldyn.data.jsonl import read_jsonl

    rows = [row for _, row in read_jsonl(path)]
    if not rows:
        raise LdynError("no rows", file=str(path))
    types = [t for t in ORDER if t in rows[0]]
    report = {}
    for t in types:
        texts = [r.get(t) or "" for r in rows]
        filled = [(r, x) for r, x in zip(rows, texts) if x.strip()]
        seen = Counter(x.strip() for _, x in filled)
        same_row = sum(any(x.strip() == (r.get(o) or "").strip() for o in types if o != t) for r, x in filled)
        source = SOURCE.get(t)
        ratios = [len(words(x)) / max(len(words(r["chosen"])), 1) for r, x in filled]
        entry = {
            "rows": len(rows),
            "empty": len(rows) - len(filled),
            "duplicate_across_rows": sum(n - 1 for n in seen.values() if n > 1),
            "same_as_another_type": same_row,
            "length_vs_chosen": round(sum(ratios) / len(ratios), 3) if ratios else None,
        }
        if source and source != t and filled:
            overlaps = [overlap(x, r.get(source) or "") for r, x in filled]
            entry["overlap_with_" + source] = round(sum(overlaps) / len(overlaps), 3)
            entry["copies_of_" + source] = sum(x.strip() == (r.get(source) or "").strip() for r, x in filled)
        report[t] = entry
    provenance = Path(str(path) + ".provenance.json")
    if provenance.is_file():
        fields = json.loads(provenance.read_text()).get("fields", {})
        for t, how in fields.items():
            if t in report:
                report[t]["generator"] = how.get("generator")
                report[t]["failed_rows"] = how.get("failed_rows", [])
    return report


def check_file(path: str | Path) -> tuple[dict, Path]:
    """`check`, and the report written beside the file as FILE.check.json."""
    report = check(path)
    written = Path(str(path) + ".check.json")
    written.write_text(json.dumps(report, indent=2) + "\n")
    return report, written


def read_instructions(path: str | Path) -> dict[str, str]:
    """A YAML mapping of field -> prompt template (`{chosen}`, `{rejected}`, `{words}`, `{prompt}`)."""
    from ldyn.schema import read_yaml

    return {str(k): str(v) for k, v in read_yaml(Path(path)).items()}


def check_lines(report: dict) -> list[str]:
    """The report as a table, one line per type."""
    lines = [f"{'type':<20}{'empty':>6}{'dup':>5}{'len/chosen':>11}  overlap with source   generator (failed rows)"]
    for t, e in report.items():
        ov = next(((k.removeprefix("overlap_with_"), v) for k, v in e.items() if k.startswith("overlap_with_")), None)
        copies = next((v for k, v in e.items() if k.startswith("copies_of_")), 0)
        ov_text = f"{ov[1]:.2f} ({ov[0]}; {copies} copies)" if ov else "-"
        failed = e.get("failed_rows") or []
        length = "-" if e["length_vs_chosen"] is None else f"{e['length_vs_chosen']:.2f}"
        lines.append(
            f"{t:<20}{e['empty']:>6}{e['duplicate_across_rows'] + e['same_as_another_type']:>5}"
            f"{length:>11}  {ov_text:<21}{e.get('generator') or '-'}"
            f"{f' ({len(failed)} failed)' if failed else ''}"
        )
    return lines
