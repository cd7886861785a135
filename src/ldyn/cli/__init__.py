"""The `ldyn` command: each subcommand is one library call.

    ldyn run RECIPE [key=value | --key=value ...] [--overwrite]   train + probe into runs/<name>
    ldyn run SUITE [key=value ...]                               every run of a suite, then its report
    ldyn resume RUN_DIR                                          continue a run from its last checkpoint
    ldyn pass-at-k RUN_DIR [--stage NAME] [--n N] [--k K ...]    an RL stage's pass@k before and after it
    ldyn decompose RECIPE [--stage NAME] [key=value ...]         one update, decomposed into A·K·G terms
    ldyn score-pairs DATA [--recipe R] [--stage NAME] [--out F]  rank pairs by how much their own update lowers chosen
    ldyn plot RUN_DIR [RUN_DIR ...]                              redraw a run's figures from its files
    ldyn influence RUN_DIR ... [--out FILE]                      accumulated-influence heatmap across runs
    ldyn compare RUN_DIR ... [--out FILE]                        runs' probe curves side by side
    ldyn export RUN_DIR [--table T] [--format F] [--out FILE]    probes, decomposition or metrics as a table
    ldyn diagnose RUN_DIR ...                                    the paper's phenomena the runs show, in words
    ldyn view RUN_DIR ... [--out page.html]                      an interactive page: overview, each prompt drilled into
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

import os
import sys

from ldyn.cli.parser import build_parser
from ldyn.errors import LdynError
from ldyn.runtime.allocator import keep_freed_memory


def _overrides(extra: list[str]) -> list[str]:
    for item in extra:
        if "=" not in item:
            raise LdynError(f"unrecognised argument '{item}' (overrides look like key=value or --key=value)")
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("run", "config", "decompose", "score-pairs"):
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
    from ldyn import catalog

    return catalog.losses() if args.what == "losses" else catalog.recipes(suites=args.what == "suites")


def _config(args, overrides) -> list[str]:
    from ldyn import config

    if args.recipe and "=" in args.recipe:  # `ldyn config --keys probe.n=3`: an override took the recipe's place
        args.recipe, overrides = None, [args.recipe, *overrides]
    if args.keys is not None:
        from ldyn.catalog import config_keys

        return config_keys(args.recipe, args.keys, overrides)
    if args.recipe is None:
        raise LdynError("give a recipe: `ldyn config RECIPE [key=value ...]`, or list every key: `ldyn config --keys`")
    return [config.dump_config(config.load_config(args.recipe, overrides)).rstrip("\n")]


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

    return [str(export_run(args.run_dir, args.format, args.out, args.table))]


def _diagnose(args, overrides) -> list[str]:
    from ldyn.runs.diagnose import diagnose_paths, format_findings

    lines = []
    for label, findings in diagnose_paths(args.run_dirs).items():
        lines += [f"{label}:", *(f"  {line}" for line in format_findings(findings))]
    return lines


def _view(args, overrides) -> list[str]:
    from ldyn.paper.report import write_view_page

    return [str(write_view_page(args.run_dirs, args.out))]


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


def _score_pairs(args, overrides) -> list[str]:
    from ldyn.config import load_config
    from ldyn.train.pair_scores import score_pairs, write_pair_scores

    # probing is off while scoring: a recipe's required probe.path is the pairs themselves unless given
    cfg = load_config(args.recipe, [f"data.train={args.data}", f"probe.path={args.data}", *overrides])
    rows = score_pairs(cfg, args.stage)
    out = write_pair_scores(rows, args.out)
    shown = [f"{'rank':>5}  {'example':<16} {'self_chosen':>12} {'from_chosen':>12} {'from_rejected':>13}"]
    shown += [
        f"{r['rank']:>5}  {str(r['example_id'])[:16]:<16} {r['self_chosen']:>12.4g} {r['from_chosen']:>12.4g} "
        f"{r['from_rejected']:>13.4g}"
        for r in rows[: args.top]
    ]
    return [*shown, f"ldyn: wrote {len(rows)} pairs' scores to {out}"]


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
        start=args.start,
        n=args.n,
        judge_cfg=judge,
        out=args.out,
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

    from ldyn.runtime.files import writable_folder
    from ldyn.toys import digits, squeeze

    writable_folder(args.out, "--out")
    if args.toy == "squeeze":
        return [
            *squeeze.summary_lines(squeeze.run(args.out, n_check=args.check, seed=args.seed)),
            f"{args.out}/squeeze.png",
        ]
    cfg = digits.DigitsConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(digits.DigitsConfig)})
    return [*digits.run(cfg, args.out).summary_lines(cfg), f"{args.out}/digits.png"]


def _pass_at_k(args, overrides) -> list[str]:
    from ldyn.train.pass_rates import PASS_AT_K, format_pass_at_k, run_pass_at_k

    result = run_pass_at_k(args.run_dir, args.stage, n=args.n, ks=tuple(args.k), prompts=args.prompts)
    return [*format_pass_at_k(result), f"ldyn: wrote {PASS_AT_K} in {args.run_dir}"]


COMMANDS = {
    "ls": _ls,
    "config": _config,
    "plot": _plot,
    "influence": _influence,
    "compare": _compare,
    "export": _export,
    "diagnose": _diagnose,
    "view": _view,
    "report": _report,
    "run": _run,
    "decompose": _decompose,
    "score-pairs": _score_pairs,
    "resume": _resume,
    "pass-at-k": _pass_at_k,
    "winrate": _winrate,
    "toy": _toy,
    "probes": _probes,
}
HEAVY = (
    "run",
    "decompose",
    "score-pairs",
    "resume",
    "pass-at-k",
    "winrate",
    "probes",
)  # commands that load models: quiet the libraries first


def _quiet_libraries() -> None:
    """Keep the console to our progress bars: no per-tensor loading bars or advisory warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
