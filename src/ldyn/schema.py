"""Typed settings from plain data: YAML with line numbers, dataclasses from dicts, dotted overrides.

Every settings file ldyn reads -- recipes, suites, the win-rate section of a suite, a run's `config.yaml` -- is a
dataclass built by `from_dict`, so all of them fail the same way on bad input: an unknown key names the nearest
valid one, a value of the wrong type names the key, and a value outside a field's allowed set names the set. The
allowed set is the field's own type:

    dtype: Literal["float32", "bfloat16", "float64"]      # "unknown value 'float16' (did you mean ...)"
    name: Annotated[Literal["adamw", "sgd"], "optimizer"]  # "unknown optimizer 'adam' (did you mean 'adamw'?)"

A list field takes one syntax everywhere, in YAML and on the command line: `key=[a,b]`, `key=a,b`, `key=a` and
`key=[]`, each element read as the list's element type. A field's help is the comment beside it in its class (see
`field_help`), which `ldyn config --keys` lists with every key's type and value (`keys`).

Nothing here knows what a run is; `config.py` declares that.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml

from ldyn.errors import LdynError, did_you_mean

MISSING = "???"  # a required value: the recipe or the command line must set it
__all__ = ["MISSING", "apply_override", "field_help", "from_dict", "keys", "leading_comment", "read_yaml", "to_dict"]


# ---------------------------------------------------------------- reading YAML with line numbers


class _LineDict(dict):
    """A dict that remembers the YAML line of each key, so errors can name it."""

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
    """A YAML mapping whose dicts know the line of each key; one-line errors naming the file and line."""
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
        raise LdynError("a settings file must be a YAML mapping of keys", file=str(path))
    return data


# ---------------------------------------------------------------- one value of a declared type


class _Where:
    """Where a value came from, for error messages."""

    def __init__(self, key: str, file: str | None, line: int | None):
        self.key, self.file, self.line = key, file, line

    def error(self, message: str) -> LdynError:
        return LdynError(message, file=self.file, line=self.line, field=self.key)

    def expected(self, what: str, value) -> LdynError:
        return self.error(f"expected {what}, got {value!r}")


def _to_bool(value, where: _Where) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise where.expected("true or false", value)


def _to_int(value, where: _Where) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise where.expected("an integer", value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise where.expected("an integer", value) from None


def _to_float(value, where: _Where) -> float:
    if isinstance(value, bool):
        raise where.expected("a number", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise where.expected("a number", value) from None


def _to_str(value, where: _Where) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise where.expected("a string", value)
    return str(value)


SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _choice(value, choices: tuple, noun: str, where: _Where) -> str:
    value = _to_str(value, where)
    if value not in choices:
        raise where.error(f"unknown {noun} '{value}'{did_you_mean(value, choices)}")
    return value


def _split_list(text: str, where: _Where) -> list[str]:
    """A list written as text: `[a,b]`, `[a, 'b']`, `a,b`, `a` or `[]` (and `` for none), as element strings."""
    text = text.strip()
    bracketed = text.startswith("["), text.endswith("]")
    if any(bracketed) and not all(bracketed):
        raise where.error(f"expected a list like [a,b] or a,b, got {text!r}")
    items = [v.strip() for v in (text[1:-1] if all(bracketed) else text).split(",")]
    return [v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in "'\"" else v for v in items if v]


def _to_list(value, item, where: _Where) -> list:
    if isinstance(value, str) and not dataclasses.is_dataclass(item):
        value = _split_list(value, where)
    elif isinstance(value, str) and value.strip() in ("[]", ""):  # a list of settings objects can only be emptied
        value = []
    if not isinstance(value, list):
        raise where.expected("a list", value)
    if dataclasses.is_dataclass(item):
        return [coerce(v, item, _Where(f"{where.key}.{i}", where.file, where.line)) for i, v in enumerate(value)]
    return [coerce(v, item, where) for v in value]


def coerce(value, tp, where: _Where):
    """Convert a YAML or command-line value to the declared type `tp`, or fail naming the key."""
    if isinstance(value, str) and value == MISSING:
        return MISSING
    noun = "value"
    if typing.get_origin(tp) is Annotated:
        tp, noun = typing.get_args(tp)[0], typing.get_args(tp)[1]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise where.expected("a mapping", value)
        return from_dict(tp, value, prefix=where.key + ".", file=where.file)
    if origin is Literal:
        return _choice(value, args, noun, where)
    if origin is list:
        return _to_list(value, args[0], where)
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where)
    if tp in SCALARS:
        return SCALARS[tp](value, where)
    raise TypeError(f"unsupported settings field type {tp}")  # a bug in a declaration, not user input


def from_dict(cls, data: dict, *, prefix: str = "", file: str | None = None, what: str = "key"):
    """Build dataclass `cls` from a (possibly nested) dict; unknown keys fail naming the nearest valid one (as an
    "unknown {what}")."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    lines = getattr(data, "lines", {})
    kwargs = {}
    for key, value in data.items():
        line = lines.get(key)
        if key not in names:
            raise LdynError(f"unknown {what} '{prefix}{key}'{did_you_mean(str(key), names)}", file=file, line=line)
        kwargs[key] = coerce(value, hints[key], _Where(prefix + str(key), file, line))
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def flatten(data: dict, prefix: str = "") -> dict:
    """A nested dict (a config's `to_dict`) as dotted keys, lists of named items (stages) by name, as overrides
    address them: {"stages.dpo.optim.lr": 1e-6, ...}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(x, dict) and "name" in x for x in value):
            for item in value:
                out |= flatten(item, f"{prefix}{key}.{item['name']}.")
        else:
            out[prefix + key] = value
    return out


# ---------------------------------------------------------------- dotted overrides


def _child(obj, segment: str, path: str):
    """Step from a settings object (or a list of named items) to its child named `segment`."""
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


def apply_override(obj, item: str) -> None:
    """Apply one `a.b.c=value` override (a leading `--` is allowed) in place. Lists of named items (stages) are
    addressed by name or index, or all at once with `*` (`stages.*.x` sets x in every stage)."""
    key, sep, value = item.removeprefix("--").partition("=")
    if not sep or not key:
        raise LdynError(f"an override must look like key=value or --key=value, got '{item}'")
    head, star, tail = key.partition(".*.")
    if star:
        for i in range(len(_child(obj, head, head))):
            apply_override(obj, f"{head}.{i}.{tail}={value}")
        return
    *parents, last = key.split(".")
    target = obj
    for depth, segment in enumerate(parents):
        target = _child(target, segment, ".".join(parents[: depth + 1]))
    if isinstance(target, list) or not dataclasses.is_dataclass(target):
        raise LdynError(f"'{key}' does not name a config value")
    names = [f.name for f in dataclasses.fields(target)]
    if last not in names:
        raise LdynError(f"unknown key '{key}'{did_you_mean(last, names)}")
    hint = typing.get_type_hints(type(target), include_extras=True)[last]
    setattr(target, last, coerce(value, hint, _Where(key, None, None)))


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


# ---------------------------------------------------------------- help and the list of keys


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text, whether the line is only the comment), tool directives left out."""
    lines = source.splitlines()
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        text = tok.string.lstrip("#").strip()
        if tok.type == tokenize.COMMENT and not re.match(r"(fmt|noqa|type|pragma)\b", text):
            found[tok.start[0]] = (text, lines[tok.start[0] - 1].lstrip().startswith("#"))
    return found


def field_help(cls) -> dict[str, str]:
    """Each field's help: its `metadata["help"]`, else the comment documenting it in the class's source, as one line.

    A field's comment is the one beside it, continued on the comment lines below it; or, for a field with no comment
    beside it, the comment lines directly above it. (Comment lines between a commented field and an uncommented one
    are the latter's.) A field without either has no help ("")."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): metadata only
        return {f.name: helps.get(f.name, "") for f in dataclasses.fields(cls)}
    comments = _comments(source)
    body = ast.parse(source).body[0].body
    spans = [
        (n.target.id, n.lineno, n.end_lineno)
        for n in body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    ]
    beside = {name: [comments[r][0] for r in range(a, b + 1) if r in comments and not comments[r][1]]
              for name, a, b in spans}  # fmt: skip
    parts = {name: ([], list(text)) for name, text in beside.items()}  # (above, beside and continued)
    ends, starts = {b: name for name, _, b in spans}, {a: name for name, a, _ in spans}
    row, last = 1, max(comments, default=0)
    while row <= last:
        if row not in comments or not comments[row][1]:
            row += 1
            continue
        first = row  # a block of comment-only lines: rows first .. row - 1
        while row in comments and comments[row][1]:
            row += 1
        block = [comments[r][0] for r in range(first, row)]
        before, after = ends.get(first - 1), starts.get(row)
        if before and beside[before] and not (after and not beside[after]):
            parts[before][1].extend(block)
        elif after:
            parts[after][0].extend(block)
    for name, (above, text) in parts.items():
        helps.setdefault(name, " ".join(above + text))
    return {f.name: helps.get(f.name, "") for f in dataclasses.fields(cls)}


def type_name(tp) -> str:
    """A declared type as `ldyn config --keys` shows it: int, float, str, bool, a|b|c, list[...]."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if type(None) in args:
        return "|".join(type_name(a) for a in args if a is not type(None)) + "|none"
    return getattr(tp, "__name__", str(tp))


def show_value(value) -> str:
    """A value as one would type it on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value) if value != "" else '""'


class Key(typing.NamedTuple):
    key: str  # dotted, as an override names it
    type: str
    value: str  # the current value (the default, or a recipe's)
    help: str


def keys(obj, prefix: str = "") -> list[Key]:
    """Every settable key of a settings object, depth first in declaration order. A list of settings objects (the
    stages) lists its items by name (or index), or, when empty, one item of defaults as `<i>`."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    helps = field_help(type(obj))
    found = []
    for f in dataclasses.fields(obj):
        key, value, tp = prefix + f.name, getattr(obj, f.name), hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(value):
            found += keys(value, key + ".")
        elif item is not None and dataclasses.is_dataclass(item):
            items = [(str(getattr(v, "name", MISSING)), i, v) for i, v in enumerate(value)] or [("<i>", 0, item())]
            for name, i, v in items:
                found += keys(v, f"{key}.{name if name != MISSING else i}.")
        else:
            found.append(Key(key, type_name(tp), show_value(value), helps[f.name]))
    return found


def leading_comment(path: Path) -> str:
    """The first sentence of a YAML file's leading comment block, up to a blank comment line or an indented example
    (`#   ldyn run ...`); "" when the file starts with no comment."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.removeprefix("#")
        if not line.startswith("#") or not text.strip() or text.startswith("  "):
            break
        words.append(text.strip())
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z\"`(])", " ".join(words), maxsplit=1)[0]
    return first.rstrip(".:;, ")
