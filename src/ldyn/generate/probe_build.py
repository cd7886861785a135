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

Everything a build is given is checked before anything is generated or written (`check_settings`): the numbers,
the instructions (`probe_types.py`), the splits, and `--out`, which must not be a folder, the data itself, or a file
that `ldyn probes build` did not write (no provenance beside it). The types and their instructions are in
`probe_types.py`, the cache in `generation_cache.py`, `ldyn probes check` in `probe_check.py`.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ldyn.data.embedded import shuffle_words
from ldyn.data.formats import is_file_source
from ldyn.data.preference import load_pairs
from ldyn.data.templates import render_prompt
from ldyn.errors import LdynError
from ldyn.generate.generation_cache import GenerationCache
from ldyn.generate.probe_check import check, check_file, check_lines, overlap  # noqa: F401 -- `ldyn probes check`
from ldyn.generate.probe_types import (
    GENERATED,
    INSTRUCTIONS,
    ORDER,
    RULES,
    SYSTEM,
    check_instruction,
    read_instructions,  # noqa: F401 -- `ldyn probes build --instructions`
)
from ldyn.runtime.files import write_atomically


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
        text = clean(chat.complete(system, user)) or None  # an answer that is only quotes or a label is no answer
        out.append((text, chat.failures[seen:] or ([] if text else ["empty answer"])))
    return out


def clean(text: str | None) -> str:
    """A generated response as the probe file keeps it: surrounding quotes and a 'Rephrased response:' label gone."""
    if not text:
        return ""
    text = re.sub(r"^\s*(rephrased|rewritten)?\s*(response|sentence)\s*:\s*", "", text.strip(), flags=re.I)
    return text.strip().strip('"').strip()


def initial_samples(rows: list[dict], loaded, cache: GenerationCache, settings: BuildSettings, progress) -> list[int]:
    """chosen_initial: the model under study's own sample given each prompt (as the HH text, no chat template), cut
    at the next "\\n\\nHuman:", as the authors made it; returns the rows it failed on (an empty sample). `loaded`:
    the model under study (`initial_model`), None when every sample is in the cache."""
    keys = initial_keys(rows, settings)
    todo = [i for i, k in enumerate(keys) if k not in cache.done]
    if todo:
        from ldyn.generate.sampling import sample_texts

        prompts, s = [rows[i]["prompt"] for i in todo], settings
        samples = sample_texts(s.initial_model, prompts, seed=s.seed, max_new_tokens=s.max_new_tokens, loaded=loaded)
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


def initial_keys(rows: list[dict], s: BuildSettings) -> list[str]:
    return [GenerationCache.key("chosen_initial", s.initial_model, r["prompt"], s.seed, s.max_new_tokens) for r in rows]


def load_initial_model(rows: list[dict], cache: GenerationCache, s: BuildSettings):
    """(model, tokenizer) under study, when chosen_initial has samples to make (else None): loaded before anything
    is generated, so that a model that cannot be loaded is one error and nothing is written."""
    if not s.initial_model or all(k in cache.done for k in initial_keys(rows, s)):
        return None
    from ldyn.config import ModelConfig
    from ldyn.models.load import load_model

    with _model_option("--initial-model"):
        return load_model(ModelConfig(s.initial_model), s.seed)


def make_chat(settings: BuildSettings):
    """The generator: a local causal LM, or the OpenAI-compatible endpoint at $LDYN_JUDGE_URL."""
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

    with _model_option("--generator-model"):
        model, tok = load_model(ModelConfig(settings.generator_model), settings.seed)
    return LocalChat(model, tok, settings.generator_model, settings.max_new_tokens, seed=settings.seed)


def build(settings: BuildSettings) -> Path:
    """Write the probe file, its cache and its provenance; returns the probe file's path."""
    from tqdm.auto import tqdm

    s = settings
    check_settings(s)
    pairs, _ = load_pairs(s.data, s.split, s.n if s.test_split else 5 * s.n, skip_empty=True, seed=s.seed)
    if len(pairs) < s.n:
        raise LdynError(f"--n {s.n} asks for more pairs than the data has ({len(pairs)})", file=s.data)
    ids = [p.id for p in pairs[: s.n]]
    twice = next((i for i in ids if ids.count(i) > 1), None)
    if twice is not None:
        message = f"'{twice}' is the id of two probed pairs: probe records are kept by id, so give each its own"
        raise LdynError(message, file=s.data, field="id")
    held_out = load_pairs(s.data, s.test_split, 0, skip_empty=True)[0] if s.test_split else pairs[s.n :]
    rows = rule_based(pairs[: s.n], held_out, s.seed)
    cache, provenance = GenerationCache(s.out.with_name(s.out.name + ".cache.jsonl")), {}
    chat, initial = make_chat(s), load_initial_model(rows, cache, s)
    fields = [f for f in GENERATED if f != "chosen_initial" or s.initial_model]
    with tqdm(total=len(fields) * len(rows), desc="generate", unit="response") as progress:
        for name in fields:
            started = time.time()
            if name == "chosen_initial":
                failed = initial_samples(rows, initial, cache, s, progress)
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


def check_settings(s: BuildSettings) -> None:
    """Refuse settings that cannot make a probe set, before anything is generated or written."""
    for name, value in (("--n", s.n), ("--max-new-tokens", s.max_new_tokens)):
        if value < 1:
            raise LdynError(f"must be >= 1, got {value}", field=name)
    for name, template in s.instructions.items():
        check_instruction(name, template, {})
    if is_file_source(s.data) and (s.test_split or s.split != "train"):
        option = "--test-split" if s.test_split else "--split"
        raise LdynError(
            f"a data file has no splits: {option} is for Hugging Face datasets and embedded; irr_test comes from "
            "the pairs after the first --n",
            field=option,
        )
    if s.test_split and s.test_split == s.split:
        raise LdynError(f"is the probed split '{s.split}': irr_test needs held-out pairs", field="--test-split")
    check_out(s.out, s.data)


def check_out(out: Path, data: str) -> None:
    """`out` (and the cache and provenance beside it) can be written: not a folder, not under a file, not the data
    file, and not a file that another program wrote (a probe file that `ldyn probes build` wrote has its provenance
    and cache beside it: building it again replaces it, as a rerun must)."""
    cache, provenance = (out.with_name(out.name + suffix) for suffix in (".cache.jsonl", ".provenance.json"))
    for path in (out, cache, provenance):
        if path.is_dir():
            message = "is a folder: --out names the probe file to write, e.g. probes.jsonl"
            raise LdynError(message, file=str(path), field="--out")
    folder = next((f for f in out.parents if f.exists()), Path("."))
    if not folder.is_dir():
        raise LdynError(f"cannot write it: {folder} is a file, not a folder", file=str(out), field="--out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LdynError(f"cannot write it: {folder} is read-only for you", file=str(out), field="--out")
    if out.exists() and Path(data).exists() and out.resolve() == Path(data).resolve():
        raise LdynError("is the data file: write the probe set to another file", file=str(out), field="--out")
    if out.exists() and not (provenance.is_file() or cache.is_file()):
        raise LdynError(
            f"exists and was not written by `ldyn probes build` (no {provenance.name} beside it): choose another "
            "--out, or delete the file",
            file=str(out),
            field="--out",
        )


@contextmanager
def _model_option(option: str):
    """A model that cannot be loaded is named by the option that gave it (not by a run's `model.name`)."""
    try:
        yield
    except LdynError as e:
        if e.field != "model.name":
            raise
        raise LdynError(e.message, file=e.file, line=e.line, field=option) from None


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write(out: Path, rows: list[dict], provenance: dict, s: BuildSettings) -> None:
    lines = (json.dumps({k: r[k] for k in ("id", "prompt", *ORDER) if k in r}) + "\n" for r in rows)
    meta = {
        "data": s.data,
        "n": s.n,
        "split": s.split,
        "test_split": s.test_split or f"pairs after the first {s.n}",
        "fields": provenance,
    }
    try:
        write_atomically(out, "".join(lines))
        write_atomically(out.with_name(out.name + ".provenance.json"), json.dumps(meta, indent=2) + "\n")
    except OSError as e:
        raise LdynError(f"cannot write: {e.strerror or e}", file=str(e.filename or out), field="--out") from None
