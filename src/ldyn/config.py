"""Run configuration: nested dataclasses, YAML recipes, dotted command-line overrides.

A recipe is a YAML file that maps one-to-one onto `RunConfig`. `load_config("smollm2_sft_dpo", ["stages.dpo.steps=8"])`
reads the shipped recipe (or a YAML path), applies the overrides and checks the result: an unknown key fails naming the
nearest valid one, a value of the wrong type fails naming the key, and a required value left at "???" fails -- all
before any model is loaded. Stages are addressed by name (`stages.dpo.optim.lr=1e-5`),
index (`stages.1.steps=4`) or all at once (`stages.*.batch_size=2`).

Each field is documented once, in its trailing comment.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ldyn.errors import LdynError, did_you_mean

MISSING = "???"  # a required value: the recipe or the command line must set it


@dataclass
class ModelConfig:
    name: str = "smollm2"  # "smollm2" (embedded SmolLM2-135M-Instruct), "tiny" (random, tests), HF id or local dir
    dtype: str = "float32"  # weight dtype: float32 | bfloat16 | float64
    attn_implementation: str = "sdpa"  # sdpa | eager (eager is needed for forward-mode autodiff)


@dataclass
class DataConfig:
    train: str = "embedded"  # preference pairs: "embedded", a JSONL (prompt/chosen/rejected), a HF dataset or its
    # dir, or "probe": the probe set's file (the paper's train_using_prob)
    split: str = "train"  # split to read from a HF dataset
    n_train: int = 0  # use the first N training pairs (0 = all)
    skip_empty: bool = False  # drop pairs with an empty prompt or response instead of failing on them
    max_length: int = 512  # prompt + response tokens; longer rows are truncated as in the paper's code
    max_prompt_length: int = 256  # prompt tokens kept when a row is too long
    truncation_mode: str = "keep_end"  # which end of a long prompt to keep: keep_end (HH) | keep_start


@dataclass
class ProbeConfig:
    path: str = "embedded"  # probe set: "embedded" or a JSONL with `prompt` plus one field per response type
    n: int = 16  # probe the first N prompts (0 = all)
    types: list[str] = field(default_factory=lambda: ["auto"])  # fields to probe; auto = every paper type the file has
    every: int = 5  # probe at step 0, every k updates and at the end of each stage (0 = never)
    batch_tokens: int = 4096  # padded tokens per probe forward pass


@dataclass
class DecomposeConfig:
    every: int = 0  # decompose the update after step 0 and after every k-th step (0 = never)
    n: int = 4  # observed prompts: the first N of the probe set, with all their response types
    batch_tokens: int = 1024  # padded tokens per forward-mode (JVP) batch; it holds about 3 forwards' memory
    predict: bool = True  # also the first-order A·K·G predictions (forward-mode JVPs: most of the cost); false keeps
    # the observed changes, LBK and SignDelta only


@dataclass
class LossConfig:
    name: str = "dpo"  # a registered loss: `ldyn ls losses`
    beta: float = 0.1  # β: inverse temperature of DPO-family losses (SimPO wants ~2)
    label_smoothing: float = 0.0  # ε of cdpo: assumed probability that a preference label is flipped
    slic_delta: float = 1.0  # δ of slic: hinge margin on log π(y⁺) - log π(y⁻)
    slic_lambda: float = 0.1  # λ of slic: weight of the NLL regulariser on y⁺
    rpo_alpha: float = 1.0  # α of rpo: weight of the per-token NLL on y⁺ added to DPO
    dpop_lambda: float = 50.0  # λ of dpop: penalty on y⁺ falling below its reference log-prob
    simpo_gamma: float = 0.5  # γ of simpo: target reward margin


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | rmsprop | sgd
    lr: float = 1e-5  # peak learning rate
    weight_decay: float = 0.0  # decoupled for adamw, L2 for rmsprop/sgd
    momentum: float = 0.0  # sgd and rmsprop momentum
    warmup_steps: int = 0  # linear warmup min(1, (t+1)/(warmup+1)) as in the paper's code; constant after
    max_grad_norm: float = 10.0  # clip the global gradient norm (0 = no clipping)


@dataclass
class SampleConfig:
    responses: str = "none"  # none: y⁺ and y⁻ from the data (off-policy) | rejected: y⁻ sampled, y⁺ from the data |
    # both: two samples per prompt, the one `rank` prefers becomes y⁺
    source: str = "policy"  # policy: the model being trained, at each update (on-policy) | reference: the stage's
    # frozen starting model (SPIN)
    rank: str = "overlap"  # orders the two samples of `both`: overlap (token-unigram F1 with the data's y⁺ minus
    # with its y⁻) | judge (the run's `judge`)
    max_new_tokens: int = 64  # longest sample; a sample that hits it has no EOS
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # sample from the k most likely tokens only (0 = the whole vocabulary)


@dataclass
class StageConfig:
    name: str = MISSING  # label used in files and figures, and to address the stage in overrides (sft, dpo, ...)
    steps: int = MISSING  # number of optimizer updates in this stage
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 4  # pairs (or SFT examples) per micro-batch
    grad_accum: int = 1  # micro-batches per update
    extend: bool = False  # SFT on chosen ∪ rejected: each pair gives two SFT examples (the paper's "extend")
    target: str = "chosen"  # the response field SFT trains on (chosen, rejected, irr_hum, ...: the paper's
    # train_supervise); preference losses always use chosen and rejected
    sample: SampleConfig = field(default_factory=SampleConfig)  # on-policy responses (preference losses only)


@dataclass
class JudgeConfig:
    kind: str = "local"  # local: a causal LM scores the letters A and B | endpoint: an OpenAI-compatible chat API
    # at $LDYN_JUDGE_URL with key $LDYN_JUDGE_KEY
    model: str = "smollm2"  # local: the judge model (as model.name); endpoint: the model name sent to the API
    timeout: float = 60.0  # endpoint: seconds per request
    retries: int = 3  # endpoint: attempts per judgement (timeouts, errors, unparseable answers)


@dataclass
class RunConfig:
    name: str = MISSING  # run name; the run directory defaults to runs/<name>
    output_dir: str = ""  # run directory ("" = runs/<name>)
    seed: int = 0  # seeds data order, derived probe types and tiny-model init
    mixed_precision: str = "no"  # no | bf16 (autocast for training; probes always run in fp32)
    checkpoint_every: int = 0  # save a resumable checkpoint every k updates (0 = only at stage ends)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # ranks samples for stages with sample.rank=judge
    stages: list[StageConfig] = field(default_factory=list)  # trained in order; each DPO-family stage's reference
    # is a frozen copy of the model at that stage's start

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


CHOICES = {  # fields restricted to a fixed set of values (losses are checked against their registry elsewhere)
    "dtype": ("float32", "bfloat16", "float64"),
    "attn_implementation": ("sdpa", "eager"),
    "truncation_mode": ("keep_end", "keep_start"),
    "mixed_precision": ("no", "bf16"),
    "responses": ("none", "rejected", "both"),
    "source": ("policy", "reference"),
    "kind": ("local", "endpoint"),
}


# ---------------------------------------------------------------- reading YAML with line numbers


class _LineDict(dict):
    """A dict that remembers the YAML line of each key, so config errors can name it."""

    lines: dict


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_line_dict(loader, node):
    mapping = _LineDict()
    yield mapping  # two-step construction, as PyYAML's own mappings do (nested and recursive nodes)
    mapping.update(loader.construct_mapping(node))
    mapping.lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_line_dict)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LdynError(f"cannot read config: {e}", file=str(path)) from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as e:
        line = e.problem_mark.line + 1 if getattr(e, "problem_mark", None) else None
        raise LdynError(f"invalid YAML: {getattr(e, 'problem', e)}", file=str(path), line=line) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LdynError("a recipe must be a YAML mapping of config keys", file=str(path))
    return data


# ---------------------------------------------------------------- building dataclasses from plain data


def _coerce(value, tp, key: str, file: str | None, line: int | None):
    """Convert a YAML or command-line value to the field type `tp`, or fail naming the key."""

    def bad(expected: str):
        return LdynError(f"expected {expected}, got {value!r}", file=file, line=line, field=key)

    if isinstance(value, str) and value == MISSING:
        return MISSING
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad("a mapping")
        return from_dict(tp, value, prefix=key + ".", file=file)
    if origin is list:
        (item,) = args
        if isinstance(value, str) and not dataclasses.is_dataclass(item):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad("a list")
        if dataclasses.is_dataclass(item):
            return [_coerce(v, item, f"{key}.{i}", file, line) for i, v in enumerate(value)]
        return [_coerce(v, item, key, file, line) for v in value]
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, file, line)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if tp is int:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise bad("an integer") from None
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad("a string")
        value = str(value)
        name = key.rsplit(".", 1)[-1]
        if name in CHOICES and value not in CHOICES[name]:
            raise LdynError(
                f"unknown value '{value}'{did_you_mean(value, CHOICES[name])}", file=file, line=line, field=key
            )
        return value
    raise TypeError(f"unsupported config field type {tp}")  # a bug in this module, not user input


def from_dict(cls, data: dict, *, prefix: str = "", file: str | None = None):
    """Build dataclass `cls` from a (possibly nested) dict; unknown keys fail naming the nearest valid one."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    lines = getattr(data, "lines", {})
    kwargs = {}
    for key, value in data.items():
        line = lines.get(key)
        if key not in names:
            raise LdynError(f"unknown key '{prefix}{key}'{did_you_mean(str(key), names)}", file=file, line=line)
        kwargs[key] = _coerce(value, hints[key], prefix + key, file, line)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- overrides and checks


def _child(obj, segment: str, path: str):
    """Step from a config object (or list of stages) to its child named `segment`."""
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            if segment == str(i) or getattr(item, "name", None) == segment:
                return item
        names = [str(getattr(item, "name", i)) for i, item in enumerate(obj)]
        raise LdynError(f"unknown stage '{segment}' in '{path}'{did_you_mean(segment, names)}")
    names = [f.name for f in dataclasses.fields(obj)]
    if segment not in names:
        raise LdynError(f"unknown key '{path}'{did_you_mean(segment, names)}")
    return getattr(obj, segment)


def apply_override(cfg: RunConfig, item: str) -> None:
    """Apply one `a.b.c=value` override (a leading `--` is allowed) in place; `stages.*.x` sets x in every stage."""
    key, sep, value = item.removeprefix("--").partition("=")
    if not sep or not key:
        raise LdynError(f"an override must look like key=value or --key=value, got '{item}'")
    if key.startswith("stages.*."):
        for stage in cfg.stages:
            apply_override(cfg, f"stages.{cfg.stages.index(stage)}.{key[len('stages.*.') :]}={value}")
        return
    *parents, last = key.split(".")
    obj = cfg
    for depth, segment in enumerate(parents):
        obj = _child(obj, segment, ".".join(parents[: depth + 1]))
    if isinstance(obj, list) or not dataclasses.is_dataclass(obj):
        raise LdynError(f"'{key}' does not name a config value")
    names = [f.name for f in dataclasses.fields(obj)]
    if last not in names:
        raise LdynError(f"unknown key '{key}'{did_you_mean(last, names)}")
    setattr(obj, last, _coerce(value, typing.get_type_hints(type(obj))[last], key, None, None))


def missing_keys(obj, prefix: str = "") -> list[str]:
    """Dotted names of every value still at MISSING ("???")."""
    found = []
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if isinstance(value, str) and value == MISSING:
            found.append(key)
        elif dataclasses.is_dataclass(value):
            found += missing_keys(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    label = item.name if getattr(item, "name", MISSING) != MISSING else str(i)
                    found += missing_keys(item, f"{key}.{label}.")
    return found


def check(cfg: RunConfig) -> None:
    """Fail on missing required values and on config that cannot run; cheap, and before any model loads."""
    missing = missing_keys(cfg)
    if missing:
        raise LdynError(
            f"missing required value{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
            f"(set it in the recipe or on the command line, e.g. {missing[0]}=...)"
        )
    if not cfg.stages:
        raise LdynError("no training stages: a recipe needs at least one entry under 'stages'")
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise LdynError(f"stage names must be unique, got {names}")
    for s in cfg.stages:
        for key, value in (("steps", s.steps), ("batch_size", s.batch_size), ("grad_accum", s.grad_accum)):
            if value < (0 if key == "steps" else 1):
                raise LdynError(
                    f"must be {'>= 0' if key == 'steps' else '>= 1'}, got {value}", field=f"stages.{s.name}.{key}"
                )
    if cfg.data.max_prompt_length >= cfg.data.max_length:
        raise LdynError("must be smaller than data.max_length", field="data.max_prompt_length")


# ---------------------------------------------------------------- recipes


def _shipped(suites: bool) -> list[str]:
    names = []
    for p in resources.files("ldyn.recipes").iterdir():
        if p.name.endswith(".yaml"):
            text = "\n" + p.read_text(encoding="utf-8")
            if ("\nsuite:" in text) == suites:
                names.append(p.name[:-5])
    return sorted(names)


def recipe_names() -> list[str]:
    """Shipped single-run recipes."""
    return _shipped(suites=False)


def suite_names() -> list[str]:
    """Shipped suites (YAML files with a top-level `suite:` key, see `suite.py`)."""
    return _shipped(suites=True)


def recipe_path(name_or_path: str) -> Path:
    """A YAML path as given, or the shipped recipe of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise LdynError("recipe file not found", file=str(path))
        return path
    shipped = resources.files("ldyn.recipes") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise LdynError(
            f"unknown recipe '{name_or_path}'"
            f"{did_you_mean(name_or_path, recipe_names() + suite_names())}; "
            "give a shipped recipe name (`ldyn ls recipes`) or a YAML path"
        )
    return Path(str(shipped))


def load_config(recipe: str, overrides: list[str] = ()) -> RunConfig:
    """Recipe name or path + dotted overrides -> a checked RunConfig."""
    path = recipe_path(recipe)
    cfg = from_dict(RunConfig, read_yaml(path), file=str(path))
    for item in overrides:
        apply_override(cfg, item)
    check(cfg)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
