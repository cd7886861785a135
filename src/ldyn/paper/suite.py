"""Suites: several recipes run one after another into one directory, then compared. `ldyn run SUITE` runs one.

A suite is a YAML file among the recipes with a top-level `suite:` key:

    suite: paper_extend_vs_baseline     # its directory: runs/<suite>/, one sub-directory per run
    overrides: [probe.n=8]              # applied to every run (before the command line's overrides)
    runs:
      - paper_sft_dpo                   # a recipe, run under its own name
      - {recipe: paper_dpo, name: dpo_lr3e-5, overrides: [stages.dpo.optim.lr=3e-5]}
      - {suite: paper_appendix_study}   # every run of another suite
    toys: [squeeze]                     # toy experiments whose results the report reads
    winrate:                            # judged comparisons of stage checkpoints (`winrate.py`)
      prompts: {start: 450, n: 32}      # held-out prompts: pairs [start, start+n) as the runs load them
      pairs: [[paper_extend/dpo, paper_sft_dpo/dpo]]
      both_orders: true                 # each pair judged A/B and B/A, a split verdict is a tie (the default)

Every run's config is built and checked before the first one starts, so a typo fails at once. The command line's
overrides apply to every run; a run's own overrides come last (a sweep keeps its values), and each
command-line override they replace is named in a note (`shadowed`). Running a suite again
skips the runs that finished and resumes the one that was interrupted; `suite.jsonl` records each run's wall time.
At the end the suite writes `report.html` (`report.py`) over all its runs.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ldyn.config import RunConfig, check, load_config, read_config, recipe_path
from ldyn.errors import LdynError
from ldyn.paper.winrate import WinrateSpec
from ldyn.runs.directory import CONFIG, SUITE_LOG, RunDir, finished
from ldyn.runs.resume_policy import first_difference, trained_config
from ldyn.runtime.files import writable_folder
from ldyn.schema import apply_override, from_dict, read_yaml


@dataclass
class RunEntry:
    """One entry of a suite's `runs:` (a bare recipe name is read as `{recipe: NAME}`)."""

    recipe: str = ""  # a recipe, run under its own name (or `name`)
    suite: str = ""  # or: every run of another suite
    name: str = ""  # the run's folder ("" = the recipe's name)
    overrides: list[str] = field(default_factory=list)  # applied after the command line's


@dataclass
class SuiteConfig:
    """A suite file, as written."""

    suite: str = ""  # its name ("" = the file's)
    overrides: list[str] = field(default_factory=list)  # applied to every run, before the command line's
    runs: list[RunEntry] = field(default_factory=list)
    toys: list[Literal["squeeze"]] = field(default_factory=list)  # toy experiments the report reads
    winrate: WinrateSpec | None = None  # judged comparisons of stage checkpoints


@dataclass
class SuiteRun:
    name: str
    recipe: str
    common: list[str]  # the suites' overrides: before the command line's
    own: list[str]  # the run's own overrides: after the command line's


@dataclass
class Suite:
    name: str
    path: Path
    runs: list[SuiteRun]
    toys: list[str] = field(default_factory=list)
    winrate: WinrateSpec | None = None


def is_suite(name_or_path: str) -> bool:
    try:
        return "suite" in read_yaml(recipe_path(name_or_path))
    except LdynError:
        return False


def read_suite(path: Path) -> SuiteConfig:
    data = read_yaml(path)
    runs = data.get("runs")
    if isinstance(runs, list):  # a bare recipe name is {recipe: NAME}
        data["runs"] = [{"recipe": r} if isinstance(r, str) else r for r in runs]
    return from_dict(SuiteConfig, data, file=str(path), what="suite key")


def load_suite(name_or_path: str, _seen: tuple = ()) -> Suite:
    path = recipe_path(name_or_path)
    spec = read_suite(path)
    where = dict(file=str(path))
    name = spec.suite or path.stem
    if name in _seen:
        raise LdynError(f"suite '{name}' includes itself", **where)
    runs: list[SuiteRun] = []
    for i, item in enumerate(spec.runs):
        if bool(item.recipe) == bool(item.suite):
            raise LdynError(
                "a run is a recipe name or a mapping with `recipe` (or `suite`)", field=f"runs.{i}", **where
            )
        if item.suite:
            inner = load_suite(item.suite, (*_seen, name))
            runs += [
                SuiteRun(r.name, r.recipe, [*spec.overrides, *r.common], [*r.own, *item.overrides]) for r in inner.runs
            ]
        else:
            runs.append(SuiteRun(item.name or Path(item.recipe).stem, item.recipe, spec.overrides, item.overrides))
    if not runs:
        raise LdynError("a suite needs at least one entry under `runs`", **where)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise LdynError(f"run names in a suite must be unique, got {names}", **where)
    return Suite(name, path, runs, list(spec.toys), spec.winrate)


def configs(suite: Suite, overrides: list[str], root: Path) -> dict[str, RunConfig]:
    """Each run's checked config: its recipe, the suite's overrides, the command line's, then the run's own."""
    out = {}
    for r in suite.runs:
        cfg = load_config(r.recipe, [*r.common, *overrides, *r.own, f"name={r.name}", f"output_dir={root / r.name}"])
        check(cfg)
        out[r.name] = cfg
    return out


def shadowed(suite: Suite, overrides: list[str], cfgs: dict[str, RunConfig]) -> list[str]:
    """The command line's overrides that a run's own settings replace, one line per run and override, so that none
    is dropped without a word (a sweep's own lr, a run's own probe cadence). An override is replaced where applying
    it again to the run's built config (`configs`) would change it; what replaced it is each of the run's own
    overrides that changes it back. The same `apply_override` decides both, so `--key`, `stages.*.x` and stage
    indices are read as the configs read them."""
    out = []
    for r in suite.runs:
        built = cfgs[r.name]
        last = [*r.own, f"name={r.name}", f"output_dir={built.output_dir}"]  # as `configs` applies them, last
        for item in overrides:
            again = _applied(built, item)
            if again == built:
                continue
            own = [w for w in last if _applied(again, w) != again]
            out.append(f"{r.name} sets {', '.join(own)} itself, so the command line's {item} does not apply to it")
    return out


def _applied(cfg: RunConfig, item: str) -> RunConfig:
    out = copy.deepcopy(cfg)
    apply_override(out, item)
    return out


def check_suite_folder(root: Path, cfgs: dict[str, RunConfig]) -> None:
    """Refuse, before anything is written, a suite folder that is a file or under one, a folder of other files (no
    suite log and none of the suite's runs), and a run there that the suite would continue or keep although it was
    trained under other settings than these (the keys `ldyn resume` refuses to change)."""
    writable_folder(root, "--out")
    runs = {name: RunDir(cfg.run_dir) for name, cfg in cfgs.items()}
    if root.is_dir() and any(root.iterdir()) and not (root / SUITE_LOG).is_file():
        if not any(run.exists() for run in runs.values()):
            message = "holds other files and is not this suite's folder (no suite.jsonl, none of its runs)"
            message += ": choose another --out"
            raise LdynError(message, file=str(root), field="--out")
    for name, run in runs.items():
        if not run.exists():
            continue
        trained = trained_config(run) or read_config(run.path / CONFIG)
        difference = first_difference(trained, cfgs[name])
        if difference is not None:
            key, there, here = difference
            raise LdynError(
                f"the suite's run '{name}' was trained with {there!r}, these settings give {here!r}: run the suite "
                "with its earlier overrides, or into another --out",
                file=str(run.path / CONFIG),
                field=key,
            )


def run_suite(name_or_path: str, overrides: list[str] = (), output_dir: str | None = None) -> Path:
    """Run (or continue) every run of a suite, its toys and win rates, then write its report; returns its folder."""
    from ldyn.train import experiment

    suite = load_suite(name_or_path)
    root = Path(output_dir or f"runs/{suite.name}")
    cfgs = configs(suite, list(overrides), root)
    for line in shadowed(suite, list(overrides), cfgs):
        print(f"ldyn: note: {line}", file=sys.stderr)
    if suite.winrate:
        from ldyn.paper.winrate import check_suite_winrate

        check_suite_winrate(suite.winrate, cfgs)
    check_suite_folder(root, cfgs)
    log = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, cfg) in enumerate(cfgs.items(), start=1):
        out = RunDir(cfg.run_dir)
        if finished(out, cfg):
            print(f"ldyn: suite {suite.name} [{i}/{len(cfgs)}] {name}: finished earlier, kept", file=sys.stderr)
            continue
        print(f"ldyn: suite {suite.name} [{i}/{len(cfgs)}] {name}", file=sys.stderr)
        started = time.perf_counter()
        if out.exists():
            experiment.resume(str(out.path))
        else:
            experiment.run(cfg)
        log.append(SUITE_LOG, [{"run": name, "kind": "run", "seconds": round(time.perf_counter() - started, 1)}])
    for toy in suite.toys:
        _toy(toy, root, log)
    if suite.winrate:
        from ldyn.paper.winrate import suite_winrate

        started = time.perf_counter()
        suite_winrate(suite.winrate, cfgs, root)
        seconds = round(time.perf_counter() - started, 1)
        log.append(SUITE_LOG, [{"run": "winrate", "kind": "winrate", "seconds": seconds}])
    from ldyn.paper.report import write_report

    path = write_report([root], root / "report.html")
    print(f"ldyn: wrote {path}", file=sys.stderr)
    return root


def _toy(name: str, root: Path, log: RunDir) -> None:
    out = root / f"toy_{name}"
    if name != "squeeze":
        raise LdynError(f"unknown toy '{name}' in a suite (squeeze)")
    if (out / "squeeze.json").is_file():
        return
    from ldyn.toys import squeeze

    started = time.perf_counter()
    squeeze.run(out, n_check=1000, seed=0)
    log.append(SUITE_LOG, [{"run": out.name, "kind": "toy", "seconds": round(time.perf_counter() - started, 1)}])
