"""What ships and what can be set, one line each: the recipes and suites (`ldyn ls recipes|suites`), the losses
(`ldyn ls losses`) and every config key with its type, value and help (`ldyn config [RECIPE] --keys [PREFIX]`)."""

from __future__ import annotations

from ldyn import config
from ldyn.errors import LdynError, did_you_mean
from ldyn.losses import LOSSES
from ldyn.schema import apply_override, keys, leading_comment


def recipes(suites: bool = False) -> list[str]:
    """Each shipped recipe (or suite) with the first sentence of its file's leading comment."""
    names = config.suite_names() if suites else config.recipe_names()
    width = max(map(len, names), default=0)
    return [f"{name:<{width}}  {leading_comment(config.recipe_path(name))}" for name in names]


def losses() -> list[str]:
    """Each registered loss with its docstring's first line, what it needs and the hyperparameters it reads."""
    lines = []
    for spec in LOSSES.values():
        needs = [n for n, on in (("reference", spec.needs_reference), ("rejected", spec.needs_rejected)) if on]
        needs_text, params = ", ".join(needs) or "chosen only", ", ".join(spec.params) or "none"
        if spec.sampled:  # prompts and a reward; its settings are the stage's rl.*
            needs_text, params = "prompts, a reward", "stages.<i>.rl"
        lines.append(f"{spec.name:<6} {spec.summary}  (needs {needs_text}; params: {params})")
    return lines


def config_keys(recipe: str | None, prefix: str, overrides: list[str]) -> list[str]:
    """One line per key, `key  type = value  help`, the recipe's values (overrides applied, not checked: a required
    ??? shows as such) or the defaults; `prefix` keeps the keys under it."""
    if "=" in prefix:  # `ldyn config RECIPE --keys probe.n=3`: an override, not a prefix
        overrides, prefix = [*overrides, prefix], ""
    if recipe is None and (prefix in config.recipe_names() or prefix.endswith((".yaml", ".yml"))):
        recipe, prefix = prefix, ""  # `ldyn config --keys RECIPE`
    cfg = config.read_config(config.recipe_path(recipe)) if recipe else config.RunConfig()
    for item in overrides:
        apply_override(cfg, item)
    rows = keys(cfg)
    if prefix:
        stem = prefix.rstrip(".")
        under = [r for r in rows if r.key == stem or r.key.startswith(stem + ".")]
        rows = under or [r for r in rows if r.key.startswith(prefix)]
        if not rows:
            sections = {r.key.split(".")[0] for r in keys(cfg)}
            raise LdynError(f"no config key starts with '{prefix}'{did_you_mean(prefix, sections)}")
    width = max(len(r.key) for r in rows)
    kinds = [f"{r.type} = {r.value}" for r in rows]
    middle = min(max(map(len, kinds)), 40)
    return [f"{r.key:<{width}}  {kind:<{middle}}  {r.help}".rstrip() for r, kind in zip(rows, kinds)]
