"""The `ldyn` command: each subcommand is one library call.

    ldyn run RECIPE [key=value | --key=value ...] [--overwrite]   train + probe into runs/<name>
    ldyn resume RUN_DIR                                          continue a run from its last checkpoint
    ldyn decompose RECIPE [--stage NAME] [key=value ...]         one update, decomposed into A·K·G terms
    ldyn plot RUN_DIR [RUN_DIR ...]                              redraw a run's figures from its files
    ldyn influence RUN_DIR ... [--out FILE]                      accumulated-influence heatmap across runs
    ldyn config RECIPE [key=value ...]                           print the resolved config
    ldyn ls losses|recipes                                       list what is registered / shipped

User errors print one line, `ldyn: error: ...`, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ldyn.errors import LdynError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldyn", description="Learning dynamics of LLM finetuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train through a recipe's stages while probing response log-probs",
                         description="Overrides: key=value or --key=value, e.g. stages.dpo.optim.lr=2e-5")
    run.add_argument("recipe", help="a shipped recipe name (`ldyn ls recipes`) or a YAML file")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    dec = sub.add_parser("decompose", help="take one update and decompose its effect on the probe responses",
                         description="Predicted (first-order A·K·G) against observed Δ log π for one update of a "
                                     "stage, on the first decompose.n probe prompts. Overrides as for `run`.")
    dec.add_argument("recipe", help="a shipped recipe name (`ldyn ls recipes`) or a YAML file")
    dec.add_argument("--stage", help="which stage's loss and optimizer to use (default: the first)")
    dec.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir")
    plot = sub.add_parser("plot", help="redraw a run's figures from its files alone")
    plot.add_argument("run_dirs", nargs="+")
    influence = sub.add_parser("influence", help="heatmap of accumulated influence across decomposed runs")
    influence.add_argument("run_dirs", nargs="+")
    influence.add_argument("--out", default="influence.png", help="PNG to write (a CSV is written beside it)")
    config = sub.add_parser("config", help="print the resolved config of a recipe with overrides")
    config.add_argument("recipe")
    ls = sub.add_parser("ls", help="list registered losses or shipped recipes")
    ls.add_argument("what", choices=["losses", "recipes"])
    return parser


def _overrides(parser, extra: list[str]) -> list[str]:
    for item in extra:
        if "=" not in item:
            parser.error(f"unrecognised argument '{item}' (overrides look like key=value or --key=value)")
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("run", "config", "decompose"):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        return _dispatch(args, _overrides(parser, extra))
    except LdynError as e:
        print(f"ldyn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ldyn: interrupted; everything written so far is kept (continue with `ldyn resume RUN_DIR`)",
              file=sys.stderr)
        return 130


def _dispatch(args, overrides: list[str]) -> int:
    from ldyn import config

    if args.command == "ls":
        if args.what == "recipes":
            print("\n".join(config.recipe_names()))
        else:
            from ldyn.losses import LOSSES

            for spec in LOSSES.values():
                needs = ", ".join(n for n, on in (("reference", spec.needs_reference),
                                                  ("rejected", spec.needs_rejected)) if on)
                print(f"{spec.name:<6} {spec.summary}" + (f"  [needs {needs}]" if needs else ""))
        return 0
    if args.command == "config":
        print(config.dump_config(config.load_config(args.recipe, overrides)), end="")
        return 0
    if args.command == "plot":
        from ldyn.plotting import plot_run

        for run_dir in args.run_dirs:
            for path in plot_run(run_dir):
                print(path)
        return 0
    if args.command == "influence":
        from ldyn.plotting import influence_figure

        for path in influence_figure(args.run_dirs, args.out):
            print(path)
        return 0
    _quiet_libraries()
    from ldyn import experiment

    if args.command == "run":
        out = experiment.run(config.load_config(args.recipe, overrides), overwrite=args.overwrite)
    elif args.command == "decompose":
        cfg = config.load_config(args.recipe, overrides)
        out = experiment.decompose_step(cfg, args.stage, overwrite=args.overwrite)
    else:
        out = experiment.resume(args.run_dir)
    print(out.path)
    return 0


def _quiet_libraries() -> None:
    """Keep the console to our progress bars: no per-tensor loading bars or advisory warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
