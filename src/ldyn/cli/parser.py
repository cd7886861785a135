"""The `ldyn` command's arguments: one argparse sub-parser per subcommand (the handlers are in `ldyn.cli`)."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `ldyn: error:` line (exit 2) instead of a usage block."""

    def error(self, message: str):
        print(f"ldyn: error: {message} (`{self.prog} --help` lists the options)", file=sys.stderr)
        sys.exit(2)


def at_least(low: float, kind=int):
    """An argparse type: a number of `kind` that is at least `low` (argparse names the option when it fails)."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ldyn", description="Learning dynamics of LLM finetuning.")
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
    pairs = sub.add_parser(
        "score-pairs",
        help="rank training pairs by how much their own update is predicted to lower their chosen",
        description="Before training: each pair's own SGD update under a stage's loss and learning rate, its "
        "first-order effect on the pair's chosen by the readout kernel (decompose.method=readout). "
        "Overrides as for `run`.",
    )
    pairs.add_argument("data", help="preference pairs (JSONL or a Hugging Face dataset), as data.train takes them")
    pairs.add_argument("--recipe", default="smollm2_sft_dpo", help="the recipe whose model and stage to use")
    pairs.add_argument("--stage", help="which stage's loss and learning rate (default: the first preference stage)")
    pairs.add_argument("--out", default="pair_scores.csv", help="where to write every pair's scores (.csv or .jsonl)")
    pairs.add_argument("--top", type=int, default=10, help="how many of the most displaced pairs to print")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir")
    passes = sub.add_parser(
        "pass-at-k",
        help="an RL stage's pass@k before and after it, on its task and its held-out prompts",
        description="The stage's starting model and its checkpoint, n samples of each prompt at the stage's "
        "temperature, scored by its reward (the unbiased pass@k estimator); written to pass_at_k.json.",
    )
    passes.add_argument("run_dir")
    passes.add_argument("--stage", help="which sampled stage (default: the first)")
    passes.add_argument("--n", type=int, default=8, help="samples per prompt")
    passes.add_argument("--k", type=int, nargs="+", default=[1, 8], help="the k of pass@k, each at most n")
    passes.add_argument("--prompts", type=int, default=32, help="prompts of each set (the task's first rows)")


def _add_reading(sub) -> None:
    plot = sub.add_parser("plot", help="redraw a run's figures from its files alone")
    plot.add_argument("run_dirs", nargs="+")
    compare = sub.add_parser("compare", help="runs' probe curves side by side (chosen, rejected, others, argmax)")
    compare.add_argument("run_dirs", nargs="+")
    compare.add_argument("--out", default="compare.png", help="figure to write: .png, .pdf, .svg (CSV beside)")
    influence = sub.add_parser("influence", help="heatmap of accumulated influence across decomposed runs")
    influence.add_argument("run_dirs", nargs="+")
    influence.add_argument("--out", default="influence.png", help="figure to write: .png, .pdf, .svg (CSV beside)")
    export = sub.add_parser("export", help="a run's probes, decomposition or metrics as one table (parquet or csv)")
    export.add_argument("run_dir")
    export.add_argument(
        "--table", choices=["probes", "decomposition", "metrics"], default="probes", help="what to export (probes)"
    )
    export.add_argument(
        "--format", choices=["parquet", "csv"], help="parquet or csv (default: what --out ends in, else parquet)"
    )
    export.add_argument("--out", help="file to write, .parquet or .csv (default RUN_DIR/export/TABLE.FORMAT)")
    diagnose = sub.add_parser("diagnose", help="which of the paper's phenomena the runs show, one finding a line")
    diagnose.add_argument("run_dirs", nargs="+", help="run directories")
    view = sub.add_parser("view", help="one self-contained interactive page over runs: overview, prompts, updates")
    view.add_argument("run_dirs", nargs="+", help="run directories, or suite folders (all their runs)")
    view.add_argument("--out", help="HTML file to write (default RUN_DIR/view.html of the first run)")
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
    win.add_argument("--start", type=at_least(0), default=0, help="first row to use (default 0)")
    win.add_argument("--n", type=at_least(1), default=32, help="number of prompts (default 32)")
    win.add_argument(
        "--judge",
        choices=["local", "endpoint"],
        default="local",
        help="local: a causal LM (--judge-model); endpoint: OpenAI-compatible API at $LDYN_JUDGE_URL "
        "with $LDYN_JUDGE_KEY",
    )
    win.add_argument("--judge-model", default="smollm2", help="local model, or the model name sent to the endpoint")
    win.add_argument("--judge-time-limit", type=at_least(0, float), default=0.0, metavar="SECONDS",
                     help="endpoint: stop asking after this long in all; the rest are asked on the next run (0 = no "
                     "limit)")  # fmt: skip
    win.add_argument("--max-new-tokens", type=at_least(1), default=64, help="length of each sampled response")
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
    squeeze.add_argument(
        "--check", type=at_least(1), default=1000, metavar="N", help="random heads to check (default 1000)"
    )
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
