"""The `ldyn` command: each subcommand is one library call.

    ldyn run RECIPE [key=value | --key=value ...] [--overwrite]   train + probe into runs/<name>
    ldyn run SUITE [key=value ...]                               every run of a suite, then its report
    ldyn resume RUN_DIR                                          continue a run from its last checkpoint
    ldyn decompose RECIPE [--stage NAME] [key=value ...]         one update, decomposed into A·K·G terms
    ldyn plot RUN_DIR [RUN_DIR ...]                              redraw a run's figures from its files
    ldyn influence RUN_DIR ... [--out FILE]                      accumulated-influence heatmap across runs
    ldyn compare RUN_DIR ... [--out FILE]                        runs' probe curves side by side
    ldyn export RUN_DIR [--format parquet|csv]                   the probe records as one long table
    ldyn report RUN_DIR ... [--out FILE]                         HTML page: figures and the paper's claims checked
    ldyn winrate CKPT_A CKPT_B --prompts FILE [...]              sample from two checkpoints, judge, count
    ldyn probes build DATA --out FILE [--n N] [...]              a probe set from any preference data
    ldyn probes check FILE                                       how good a probe set's response types are
    ldyn toy squeeze [--out DIR] [--check N]                     the squeezing effect on a linear softmax head
    ldyn toy digits [--model mlp|cnn] [--out DIR] ...            classifier learning dynamics on 8×8 digits
    ldyn config RECIPE [key=value ...]                           print the resolved config
    ldyn config [RECIPE] --keys [PREFIX]                         every key: type, default (or value) and help
    ldyn ls losses|recipes|suites                                list what is registered / shipped, one line each

Overrides name a key by its dots (`stages.dpo.optim.lr=2e-5`, `--probe.every=2`); a list takes `key=[a,b]`,
`key=a,b`, `key=a` or `key=[]`. User errors print one line, `ldyn: error: ...`, and exit with status 2. Output
piped into a reader that stops early (`ldyn config RECIPE | head`) ends quietly.
"""

from __future__ import annotations

import argparse
import os
import sys

from ldyn.errors import LdynError
from ldyn.runtime.allocator import keep_freed_memory


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `ldyn: error:` line (exit 2) instead of a usage block."""

    def error(self, message: str):
        print(f"ldyn: error: {message} (`{self.prog} --help` lists the options)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ldyn", description="Learning dynamics of LLM finetuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training(sub)
    _add_reading(sub)
    _add_winrate(sub)
    _add_toys(sub)
    _add_probes(sub)
    config = sub.add_parser(
        "config",
        help="print the resolved config of a recipe with overrides, or list every key",
        description="Overrides: key=value or --key=value; a list as key=[a,b] or key=a,b",
    )
    config.add_argument("recipe", nargs="?", help="a shipped recipe (`ldyn ls recipes`) or a YAML file")
    config.add_argument(
        "--keys",
        nargs="?",
        const="",
        metavar="PREFIX",
        help="list every key (or those under PREFIX, e.g. probe) with its type, its default (the recipe's value "
        "when a recipe is given; ??? = required) and what it does",
    )
    ls = sub.add_parser("ls", help="list registered losses, or shipped recipes or suites, with a line on each")
    ls.add_argument("what", choices=["losses", "recipes", "suites"])
    return parser


def _add_training(sub) -> None:
    run = sub.add_parser(
        "run",
        help="train through a recipe's stages while probing response log-probs",
        description="Overrides: key=value or --key=value, e.g. stages.dpo.optim.lr=2e-5",
    )
    run.add_argument("recipe", help="a shipped recipe or suite (`ldyn ls recipes`, `ldyn ls suites`) or a YAML file")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    run.add_argument("--out", help="a suite's folder (default runs/<suite>)")
    dec = sub.add_parser(
        "decompose",
        help="take one update and decompose its effect on the probe responses",
        description="Predicted (first-order A·K·G) against observed Δ log π for one update of a "
        "stage, on the first decompose.n probe prompts. Overrides as for `run`.",
    )
    dec.add_argument("recipe", help="a shipped recipe name (`ldyn ls recipes`) or a YAML file")
    dec.add_argument("--stage", help="which stage's loss and optimizer to use (default: the first)")
    dec.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir")


def _add_reading(sub) -> None:
    plot = sub.add_parser("plot", help="redraw a run's figures from its files alone")
    plot.add_argument("run_dirs", nargs="+")
    compare = sub.add_parser("compare", help="runs' probe curves side by side (chosen, rejected, others, argmax)")
    compare.add_argument("run_dirs", nargs="+")
    compare.add_argument("--out", default="compare.png", help="PNG to write (a CSV is written beside it)")
    influence = sub.add_parser("influence", help="heatmap of accumulated influence across decomposed runs")
    influence.add_argument("run_dirs", nargs="+")
    influence.add_argument("--out", default="influence.png", help="PNG to write (a CSV is written beside it)")
    export = sub.add_parser("export", help="a run's probe records as one long table (parquet or csv)")
    export.add_argument("run_dir")
    export.add_argument("--format", default="parquet", choices=["parquet", "csv"])
    export.add_argument("--out", help="file to write (default RUN_DIR/export/probes.FORMAT)")
    report = sub.add_parser("report", help="an HTML page with the runs' figures and the paper's claims checked")
    report.add_argument("run_dirs", nargs="+", help="run directories, or suite folders (all their runs)")
    report.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")


def _add_winrate(sub) -> None:
    win = sub.add_parser(
        "winrate",
        help="sample from two checkpoints on held-out prompts and judge them",
        description="A's win rate = wins_A / (wins_A + wins_B). Each pair is judged in both "
        "orders and wins only if preferred both times (a split is a tie); judgements "
        "are cached, so a rerun resumes.",
    )
    win.add_argument("a", help="checkpoint A: a run's checkpoints/<stage> directory or any model name/path")
    win.add_argument("b", help="checkpoint B")
    win.add_argument("--prompts", required=True, help="JSONL with a `prompt` field (e.g. the HH probe file)")
    win.add_argument("--start", type=int, default=0, help="first row to use (default 0)")
    win.add_argument("--n", type=int, default=32, help="number of prompts (default 32)")
    win.add_argument(
        "--judge",
        choices=["local", "endpoint"],
        default="local",
        help="local: a causal LM (--judge-model); endpoint: OpenAI-compatible API at $LDYN_JUDGE_URL "
        "with $LDYN_JUDGE_KEY",
    )
    win.add_argument("--judge-model", default="smollm2", help="local model, or the model name sent to the endpoint")
    win.add_argument("--judge-time-limit", type=float, default=0.0, metavar="SECONDS",
                     help="endpoint: stop asking after this long in all; the rest are asked on the next run (0 = no "
                     "limit)")  # fmt: skip
    win.add_argument("--max-new-tokens", type=int, default=64, help="length of each sampled response")
    win.add_argument("--seed", type=int, default=0, help="sampling and A/B order seed")
    win.add_argument(
        "--one-order",
        action="store_true",
        help="judge each pair once, in a random order per prompt (half the judge calls)",
    )
    win.add_argument("--out", default="runs/winrate", help="folder for responses, judgements and winrate.json")


def _add_probes(sub) -> None:
    probes = sub.add_parser("probes", help="build a probe set from any preference data, or check one")
    cmd = probes.add_subparsers(dest="probes", required=True)
    build = cmd.add_parser(
        "build",
        help="write a probe file in the paper authors' format (prompt + 12 response "
        "types) from preference pairs; generations are cached, so a rerun continues",
    )
    build.add_argument("data", help="preference pairs: a JSONL, a Hugging Face dataset, or 'embedded'")
    build.add_argument("--out", required=True, help="the probe file to write (cache and provenance go beside it)")
    build.add_argument("--n", type=int, default=64, help="probed prompts: the first N pairs (default 64)")
    build.add_argument("--split", default="train", help="split of a HF dataset (default train)")
    build.add_argument("--test-split", default="", help="irr_test from this split (default: the pairs after N)")
    build.add_argument(
        "--generator",
        choices=["local", "endpoint"],
        default="local",
        help="local: a causal LM (--generator-model); endpoint: $LDYN_JUDGE_URL with $LDYN_JUDGE_KEY",
    )
    build.add_argument("--generator-model", default="smollm2", help="local model, or the model name sent")
    build.add_argument(
        "--initial-model",
        default="smollm2",
        help="the model under study, sampled for chosen_initial ('' leaves that type out)",
    )
    build.add_argument("--instructions", help="YAML: field -> prompt template, replacing the authors' defaults")
    build.add_argument("--max-new-tokens", type=int, default=96, help="longest generated response (default 96)")
    build.add_argument("--seed", type=int, default=0, help="seeds the rule-based types and the sampling")
    check = cmd.add_parser(
        "check",
        help="per response type: empty and duplicate fields, length against chosen, "
        "word overlap with its source, and the rows a generator failed on",
    )
    check.add_argument("file")


def _add_toys(sub) -> None:
    toy = sub.add_parser("toy", help="the paper's two small worlds: the squeezing toy and digits")
    toys = toy.add_subparsers(dest="toy", required=True)
    squeeze = toys.add_parser(
        "squeeze",
        help="one update of a linear softmax head: the five notebook cases and a "
        "checker of the squeezing statements on random heads",
    )
    squeeze.add_argument("--out", default="runs/toy_squeeze", help="folder for squeeze.png and squeeze.json")
    squeeze.add_argument("--check", type=int, default=1000, metavar="N", help="random heads to check (default 1000)")
    squeeze.add_argument("--seed", type=int, default=0, help="seed of the random heads")
    digits = toys.add_parser(
        "digits",
        help="train a small classifier and record how each update moves the "
        "predictions on held-out images (A·K·G with K explicit)",
    )
    digits.add_argument("--out", default="runs/toy_digits", help="folder for the figures and data")
    _add_digits_options(digits)


def _add_digits_options(parser) -> None:
    """One --option per field of the digits toy's config dataclass, typed by its default."""
    import dataclasses

    from ldyn.toys.digits_data import DigitsConfig

    for f in dataclasses.fields(DigitsConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = type(f.default) if f.default is not None else str
            parser.add_argument(flag, type=kind, default=f.default, help=f"{f.metadata['help']} (default {f.default})")


def _overrides(extra: list[str]) -> list[str]:
    for item in extra:
        if "=" not in item:
            raise LdynError(f"unrecognised argument '{item}' (overrides look like key=value or --key=value)")
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("run", "config", "decompose"):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        code = _dispatch(args, _overrides(extra))
        sys.stdout.flush()  # here, so that a reader that stopped early (`| head`) is met below, not at exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141  # as if killed by SIGPIPE, what `yes | head` reports
    except LdynError as e:
        print(f"ldyn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "ldyn: interrupted; everything written so far is kept (continue with `ldyn resume RUN_DIR`)",
            file=sys.stderr,
        )
        return 130


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit has nowhere to fail (Python's recipe for
    SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured, as in tests)
        pass


def _dispatch(args, overrides: list[str]) -> int:
    handler = COMMANDS[args.command]
    if args.command in HEAVY:
        _quiet_libraries()
        keep_freed_memory()  # a CPU step reuses its pages rather than faulting in new ones (ldyn.runtime.allocator)
    for line in handler(args, overrides):
        print(line)
    return 0


def _ls(args, overrides) -> list[str]:
    from ldyn import config
    from ldyn.losses import LOSSES
    from ldyn.schema import leading_comment

    if args.what != "losses":
        names = config.recipe_names() if args.what == "recipes" else config.suite_names()
        width = max(map(len, names), default=0)
        return [f"{name:<{width}}  {leading_comment(config.recipe_path(name))}" for name in names]
    lines = []
    for spec in LOSSES.values():
        needs = [n for n, on in (("reference", spec.needs_reference), ("rejected", spec.needs_rejected)) if on]
        needs_text, params = ", ".join(needs) or "chosen only", ", ".join(spec.params) or "none"
        lines.append(f"{spec.name:<6} {spec.summary}  (needs {needs_text}; params: {params})")
    return lines


def _config(args, overrides) -> list[str]:
    from ldyn import config

    if args.recipe and "=" in args.recipe:  # `ldyn config --keys probe.n=3`: an override took the recipe's place
        args.recipe, overrides = None, [args.recipe, *overrides]
    if args.keys is not None:
        return _config_keys(args.recipe, args.keys, overrides)
    if args.recipe is None:
        raise LdynError("give a recipe: `ldyn config RECIPE [key=value ...]`, or list every key: `ldyn config --keys`")
    return [config.dump_config(config.load_config(args.recipe, overrides)).rstrip("\n")]


def _config_keys(recipe: str | None, prefix: str, overrides: list[str]) -> list[str]:
    """`ldyn config [RECIPE] --keys [PREFIX]`: one line per key, `key  type = value  help`, the recipe's values
    (overrides applied, not checked: a required ??? shows as such) or the defaults."""
    from ldyn import config
    from ldyn.errors import did_you_mean
    from ldyn.schema import apply_override, keys

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


def _plot(args, overrides) -> list[str]:
    from ldyn.runs.figures import plot_run

    return [str(path) for run_dir in args.run_dirs for path in plot_run(run_dir)]


def _influence(args, overrides) -> list[str]:
    from ldyn.runs.compare import influence_figure

    return [str(path) for path in influence_figure(args.run_dirs, args.out)]


def _compare(args, overrides) -> list[str]:
    from ldyn.runs.compare import compare_figure

    return [str(path) for path in compare_figure(args.run_dirs, args.out)]


def _export(args, overrides) -> list[str]:
    from ldyn.runs.export import export_run

    return [str(export_run(args.run_dir, args.format, args.out))]


def _report(args, overrides) -> list[str]:
    from ldyn.paper.report import write_report

    return [str(write_report(args.run_dirs, args.out))]


def _run(args, overrides) -> list[str]:
    from ldyn.config import load_config
    from ldyn.paper.suite import is_suite, run_suite
    from ldyn.train.experiment import run

    if is_suite(args.recipe):
        return [str(run_suite(args.recipe, overrides, args.out))]
    return [str(run(load_config(args.recipe, overrides), overwrite=args.overwrite).path)]


def _decompose(args, overrides) -> list[str]:
    from ldyn.config import load_config
    from ldyn.train.experiment import decompose_step

    return [str(decompose_step(load_config(args.recipe, overrides), args.stage, overwrite=args.overwrite).path)]


def _resume(args, overrides) -> list[str]:
    from ldyn.train.experiment import resume

    return [str(resume(args.run_dir).path)]


def _winrate(args, overrides) -> list[str]:
    from ldyn.config import JudgeConfig
    from ldyn.paper.winrate import winrate_on_file

    judge = JudgeConfig(kind=args.judge, model=args.judge_model, time_limit=args.judge_time_limit)
    out = winrate_on_file(
        args.a,
        args.b,
        args.prompts,
        args.start,
        args.n,
        judge,
        args.out,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        both_orders=not args.one_order,
    )
    return [str(out)]


def _probes(args, overrides) -> list[str]:
    from pathlib import Path

    from ldyn.generate import probe_build

    if args.probes == "check":
        report, written = probe_build.check_file(args.file)
        return [*probe_build.check_lines(report), str(written)]
    instructions = probe_build.read_instructions(args.instructions) if args.instructions else {}
    settings = probe_build.BuildSettings(args.data, Path(args.out), args.n, args.split, args.test_split, args.seed,
                                         args.generator, args.generator_model, args.initial_model, instructions,
                                         args.max_new_tokens)  # fmt: skip
    return [str(probe_build.build(settings))]


def _toy(args, overrides) -> list[str]:
    import dataclasses

    from ldyn.toys import digits, squeeze

    if args.toy == "squeeze":
        return [
            *squeeze.summary_lines(squeeze.run(args.out, n_check=args.check, seed=args.seed)),
            f"{args.out}/squeeze.png",
        ]
    cfg = digits.DigitsConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(digits.DigitsConfig)})
    return [*digits.run(cfg, args.out).summary_lines(cfg), f"{args.out}/digits.png"]


COMMANDS = {
    "ls": _ls,
    "config": _config,
    "plot": _plot,
    "influence": _influence,
    "compare": _compare,
    "export": _export,
    "report": _report,
    "run": _run,
    "decompose": _decompose,
    "resume": _resume,
    "winrate": _winrate,
    "toy": _toy,
    "probes": _probes,
}
HEAVY = ("run", "decompose", "resume", "winrate", "probes")  # commands that load models: quiet the libraries first


def _quiet_libraries() -> None:
    """Keep the console to our progress bars: no per-tensor loading bars or advisory warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
