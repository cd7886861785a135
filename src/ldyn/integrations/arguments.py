"""`LearningDynamicsCallback`'s arguments, checked: at construction whatever can be known then (`check_counts`,
`check_flags`, `check_choices`, `check_output_dir`, `check_held_out`, `parse_types`, `check_source`), when training
begins what only the trainer knows (`settle_lengths`, `held_out_of`, `check_output_dir` of the default folder).
Each failure is one `LdynError` naming the argument (`field`), before the trainer loads anything or a run
directory is created. The bounds and the allowed values are those of the recipe keys each argument mirrors
(`config.py`), so the callback refuses what `ldyn run` refuses.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path

from ldyn.config import DataConfig, DecomposeConfig, ProbeConfig
from ldyn.data.probesets import PAPER_TYPES, ROLLOUT_TYPES, load_probe_set
from ldyn.data.templates import check_template
from ldyn.errors import LdynError, did_you_mean
from ldyn.integrations.host import warn
from ldyn.integrations.trainer_data import DERIVED
from ldyn.runtime.files import writable_folder
from ldyn.schema import from_dict

KNOWN_TYPES = tuple(dict.fromkeys((*PAPER_TYPES, *DERIVED, *ROLLOUT_TYPES, "completion")))
# argument -> its smallest value, as config.check bounds the recipe key (0 = never / all / none where it may be 0)
COUNTS = {"every": 0, "n": 0, "held_out": 0, "decompose_every": 0, "decompose_n": 1, "batch_tokens": 1, "seed": 0}
LENGTHS = {"max_length": 2, "max_prompt_length": 1}  # or None: the trainer's
HELD_OUT = 4  # eval prompts probed when held_out is left None and the trainer has an eval_dataset
DEFAULT_LENGTH = 512  # max_length where neither the callback nor the trainer gives one


def whole_number(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise LdynError(f"{name} must be a whole number >= {minimum}, got {value!r}", field=name)
    return int(value)


def check_counts(values: dict) -> dict:
    """Every count (`COUNTS`) a whole number at least its bound; the lengths (`LENGTHS`) too, or None; the
    prompt's length below the total when both are given. Returns them as ints."""
    bounds, optional = COUNTS | LENGTHS, ("held_out", *LENGTHS)  # optional: None takes the trainer's or a default
    out = {k: None if v is None and k in optional else whole_number(k, v, bounds[k]) for k, v in values.items()}
    total, prompt = out.get("max_length"), out.get("max_prompt_length")
    if total is not None and prompt is not None and prompt >= total:
        raise LdynError(
            f"must be below max_length ({total}), got {prompt}: a response needs room", field="max_prompt_length"
        )
    return out


def check_flags(values: dict) -> None:
    for name, value in values.items():
        if not isinstance(value, bool):
            raise LdynError(f"must be True or False, got {value!r}", field=name)


def check_choices(truncation_mode, template, decompose_method) -> None:
    """Each a value its recipe key allows: `data.truncation_mode` and `decompose.method` as config.py declares them,
    `data.template` as `data/templates.py` reads it."""
    from_dict(DataConfig, {"truncation_mode": truncation_mode})
    from_dict(DecomposeConfig, {"method": decompose_method}, prefix="decompose_")
    if not isinstance(template, str):
        message = f"must be a string (auto, hh, chat or one with {{prompt}} in it), got {template!r}"
        raise LdynError(message, field="template")
    try:
        check_template(template)
    except LdynError as e:
        raise LdynError(e.message, field="template") from None


def parse_types(types, known_only: bool = True) -> list[str]:
    """Response types as a list: a list or tuple of names, or one string read as `ldyn run` reads the list
    `probe.types` ("chosen,rejected", "[chosen, rejected]", "chosen"); "auto" alone, or names ldyn knows
    (`known_only`: the trainer's own data, which has those alone; a probe file may hold other fields, which its
    reader checks)."""
    given = list(types) if isinstance(types, tuple) else types
    names = from_dict(ProbeConfig, {"types": given}).types  # a string split as on the command line
    if not names or not all(names):
        raise LdynError(f"names no type: give e.g. 'chosen,rejected', or 'auto', got {types!r}", field="types")
    names = list(dict.fromkeys(names))
    if "auto" in names and len(names) > 1:
        raise LdynError("'auto' stands alone (every type the probes have)", field="types")
    for t in names:
        if known_only and t != "auto" and t not in KNOWN_TYPES:
            raise LdynError(f"unknown probe type '{t}'{did_you_mean(t, KNOWN_TYPES)}", field="types")
    return names


def check_source(probes, types: list[str], n: int, seed: int):
    """The probe source, checked before anything loads: a local file must exist, and "embedded", a local file or
    rows in memory are read here, so that a missing type, a malformed line or too few prompts fail at
    construction. Returns (the source, a local path as its expanded text; the probe set read, `load_probe_set`'s
    (examples, types), or None for the trainer's data and a hub dataset, which are read when training begins)."""
    if probes is None:
        return None, None
    if isinstance(probes, (str, Path)):
        if str(probes) == "embedded":
            return "embedded", load_probe_set("embedded", types, n, seed, n_key="n")
        path = Path(probes).expanduser()
        looks_local = path.suffix in (".jsonl", ".json", ".parquet", ".csv") or str(probes).startswith((".", "/", "~"))
        if looks_local and not path.exists():
            raise LdynError(f"no such file: {path}", field="probes")
        if path.is_file():
            return str(path), load_probe_set(str(path), types, n, seed, n_key="n")
        return str(path) if path.exists() else str(probes), None  # a save_to_disk folder, or a hub name
    if hasattr(probes, "__len__") and hasattr(probes, "__getitem__"):  # a list of rows or a datasets.Dataset
        if not len(probes):
            raise LdynError("holds no rows: give at least one (prompt, chosen, ...)", field="probes")
        if isinstance(probes, (list, tuple)):
            wrong = next((i for i, row in enumerate(probes) if not isinstance(row, Mapping)), None)
            if wrong is not None:
                what = f"row {wrong + 1} must be a dict of fields (prompt, chosen, ...)"
                raise LdynError(f"{what}, got {type(probes[wrong]).__name__}", field="probes")
        return probes, load_probe_set(probes, types, n, seed, n_key="n")
    kind = type(probes).__name__
    raise LdynError(f"probes must be None, a path, 'embedded' or rows, got {kind}", field="probes")


def check_output_dir(output_dir):
    """The run directory's path (None: the trainer's `output_dir`/ldyn), where a folder can be written."""
    if output_dir is None:
        return None
    if not isinstance(output_dir, (str, Path)) or not str(output_dir):
        raise LdynError(f"must be a folder's path or None, got {output_dir!r}", field="output_dir")
    return writable_folder(output_dir, "output_dir")


def check_held_out(held_out, probes) -> None:
    if held_out and probes is not None:
        message = "counts the trainer's eval_dataset prompts, which only probes=None reads"
        raise LdynError(f"{message}: leave held_out None with a probe set", field="held_out")


# ---------------------------------------------------------------- when training begins


def settle_lengths(data: DataConfig, given: tuple[int | None, int | None], args) -> None:
    """The probes' lengths once the trainer's arguments are known: the callback's where given, else the trainer's
    `max_length` (else 512) and half of it, or the trainer's `max_prompt_length`, for the prompt. A given
    `max_length` below the trainer's is one warning line; above it, or a prompt length that leaves no room for a
    response, is an LdynError."""
    total, prompt = given
    host = getattr(args, "max_length", None)
    data.max_length = total or host or DEFAULT_LENGTH
    if total and host and total > host:
        message = f"{total} is above the trainer's max_length ({host}): probes would be longer than any training row"
        message += f"; give max_length <= {host}, or None to take the trainer's"
        raise LdynError(message, field="max_length")
    if total and host and total != host:
        warn(f"probes are tokenised to max_length={total}, the trainer trains with max_length={host}")
    host_prompt = getattr(args, "max_prompt_length", None)
    if prompt is not None:
        data.max_prompt_length = prompt
    elif host_prompt and host_prompt < data.max_length:
        data.max_prompt_length = host_prompt
    else:
        data.max_prompt_length = data.max_length // 2
    if data.max_prompt_length >= data.max_length:
        whose = "given" if total else "the trainer's" if host else "the default"
        message = f"must be below max_length ({data.max_length}, {whose}), got {data.max_prompt_length}"
        raise LdynError(f"{message}: a response needs room", field="max_prompt_length")


def held_out_of(held_out: int | None, eval_dataset) -> int:
    """How many eval prompts to probe: `held_out`, or 4 when left None and the trainer has an eval_dataset; an
    explicit count without one is an LdynError."""
    if held_out is None:
        return HELD_OUT if eval_dataset is not None else 0
    if held_out and eval_dataset is None:
        message = f"{held_out} eval prompts asked for, but the trainer has no eval_dataset"
        raise LdynError(f"{message}: give the trainer one, or leave held_out None", field="held_out")
    return held_out
