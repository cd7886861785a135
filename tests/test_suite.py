"""Suites: nested suites and the order of overrides, checks before anything runs, and a second run that keeps the
finished runs and resumes the interrupted one."""

import json
import shutil

import pytest

from ldyn import cli
from ldyn.config import load_config, recipe_names, suite_names
from ldyn.errors import LdynError
from ldyn.paper.suite import configs, load_suite, shadowed
from ldyn.runs.directory import RunDir


def test_shipped_suites_expand_to_recipes(probe_file, tmp_path):
    assert {"paper_cpu", "paper_extend_vs_baseline", "paper_dpo_lr", "paper_appendix_study"} <= set(suite_names())
    assert not set(suite_names()) & set(recipe_names())
    suite = load_suite("paper_cpu")
    names = [r.name for r in suite.runs]
    assert names[:2] == ["paper_sft_dpo", "paper_extend"] and "appendix_dpo" in names and len(names) == 15
    cfgs = configs(suite, [f"data.train={probe_file}", f"probe.path={probe_file}", "stages.*.optim.lr=1e-6"], tmp_path)
    lrs = {n: [s.optim.lr for s in c.stages] for n, c in cfgs.items()}
    assert lrs["paper_sft_dpo"] == [1e-6, 1e-6]
    assert lrs["dpo_lr3e-5"] == [3e-5]  # a run's own override comes after the command line's
    assert cfgs["appendix_dpo"].stages[0].loss.name == "dpo"
    assert cfgs["paper_spin"].run_dir == tmp_path / "paper_spin"


def test_gpu_suite_builds_with_the_paper_settings_offline(probe_file, tmp_path):
    from ldyn.paper.winrate import check_suite_winrate

    suite = load_suite("paper_gpu")
    cfgs = configs(suite, [f"probe.path={probe_file}"], tmp_path)
    check_suite_winrate(suite.winrate, cfgs)
    base = cfgs["paper_sft_dpo"]
    assert base.model.name == "EleutherAI/pythia-410m-deduped" and base.data.n_train == 5000
    assert [(s.optim.name, s.optim.lr, s.batch_size) for s in base.stages] == [("rmsprop", 5e-7, 4)] * 2
    assert base.stages[1].loss.beta == 0.1 and base.probe.n == 500 and base.judge.kind == "endpoint"
    assert len(cfgs) == len(load_suite("paper_cpu").runs)  # the same experiments as the CPU suite


def test_long_suite_trains_the_papers_eight_passes_with_its_optimizer(probe_file, tmp_path):
    cfgs = configs(load_suite("paper_cpu_long"), [f"data.train={probe_file}", f"probe.path={probe_file}"], tmp_path)
    assert set(cfgs) == {"long_sft_dpo", "long_extend", "long_dpo", "long_dpo_onpolicy"}
    for name, cfg in cfgs.items():
        assert cfg.data.max_length == 128 and cfg.probe.n == 12 and cfg.data.n_train == 64
        for stage in cfg.stages:
            assert (stage.optim.name, stage.optim.lr) == ("rmsprop", 1e-5)
            rows = cfg.data.n_train * (2 if stage.extend else 1)  # extend trains chosen ∪ rejected
            passes = stage.steps * stage.batch_size / rows
            assert passes == (4 if stage.extend or name == "long_dpo_onpolicy" else 8), (name, stage.name)


def test_500_suite_trains_every_pair_for_the_papers_passes_and_movement(probe_file, tmp_path):
    """paper_cpu_500: 500 pairs, the paper's passes per stage (SFT 8, extend 4 over chosen ∪ rejected, DPO after SFT
    6, DPO from the base 10: Figure 4, on-policy 4), and the paper's cumulative movement updates × lr."""
    cfgs = configs(load_suite("paper_cpu_500"), [f"data.train={probe_file}", f"probe.path={probe_file}"], tmp_path)
    passes, movement = {}, {}
    for name, cfg in cfgs.items():
        assert cfg.data.n_train == 500 and cfg.data.max_length == 128 and cfg.probe.n == 16
        for stage in cfg.stages:
            assert stage.optim.name == "rmsprop"
            rows = cfg.data.n_train * (2 if stage.extend else 1)
            passes[name, stage.name] = stage.steps * stage.batch_size / rows
            movement[name, stage.name] = stage.steps * stage.optim.lr
    assert passes == {
        ("p500_sft_dpo", "sft"): 8, ("p500_sft_dpo", "dpo"): 6, ("p500_extend", "sft"): 4, ("p500_extend", "dpo"): 6,
        ("p500_dpo", "dpo"): 10, ("p500_dpo_onpolicy", "dpo"): 4,
    }  # fmt: skip
    assert movement["p500_sft_dpo", "sft"] == pytest.approx(5e-3)  # the paper's 5e-7 × 10,000
    assert movement["p500_sft_dpo", "dpo"] == pytest.approx(3.75e-3)  # × 7,500
    assert movement["p500_dpo", "dpo"] == pytest.approx(1.25e-3)  # × 2,500 (Figure 4)
    on, off = cfgs["p500_dpo_onpolicy"].stages[0], cfgs["p500_dpo"].stages[0]  # claim 20 compares them at equal
    assert (on.optim, on.batch_size) == (off.optim, off.batch_size)  # steps: only how y⁻ is drawn may differ


def test_a_command_line_override_a_run_sets_itself_is_named_not_dropped_silently(probe_file, tmp_path):
    """A run's own overrides win over the command line's (a sweep keeps its values); each one they replace is said."""
    suite = load_suite("paper_cpu_500")
    cli_overrides = [f"data.train={probe_file}", f"probe.path={probe_file}", "probe.every=128", "probe.n=12"]
    cfgs = configs(suite, cli_overrides, tmp_path)
    assert {n: c.probe.every for n, c in cfgs.items()} == {
        "p500_sft_dpo": 32, "p500_extend": 32, "p500_dpo": 64, "p500_dpo_onpolicy": 64,
    }  # fmt: skip
    assert all(c.probe.n == 12 for c in cfgs.values())
    lines = shadowed(suite, cli_overrides, cfgs)
    assert len(lines) == 4 and all("probe.every=128 does not apply" in line for line in lines)
    assert lines[0].startswith("p500_sft_dpo sets probe.every=32 itself")
    assert shadowed(suite, ["probe.n=12"], configs(suite, [*cli_overrides[:2], "probe.n=12"], tmp_path)) == []
    # read as the configs read overrides: `--key`, a stage by index, every stage with `*`
    spelled = [*cli_overrides[:2], "--probe.every=128", "stages.0.optim.lr=1e-6", "stages.*.batch_size=2"]
    lines = shadowed(suite, spelled, configs(suite, spelled, tmp_path))
    assert "p500_sft_dpo sets probe.every=32 itself, so the command line's --probe.every=128 does not apply" in lines[0]
    assert "p500_sft_dpo sets stages.sft.optim.lr=5e-6 itself" in lines[1]
    assert not any("batch_size" in line for line in lines)  # no run sets its own batch size


def test_star_sets_every_stage(probe_file):
    cfg = load_config(
        "paper_sft_dpo", [f"data.train={probe_file}", f"probe.path={probe_file}", "stages.*.batch_size=3"]
    )
    assert [s.batch_size for s in cfg.stages] == [3, 3]


SUITE = """suite: mini
overrides: [model.name=tiny, data.n_train=4, probe.n=2, probe.every=1]
runs:
  - {recipe: paper_dpo, name: a, overrides: [stages.dpo.steps=2]}
  - {recipe: paper_sft_dpo, name: b, overrides: [stages.sft.steps=1, stages.dpo.steps=1]}
"""


def test_a_typo_in_any_run_fails_before_the_first_starts(tmp_path, probe_file, capsys):
    path = tmp_path / "mini.yaml"
    path.write_text(SUITE.replace("stages.sft.steps=1", "stages.sft.stesp=1"))
    out = tmp_path / "out"
    assert cli.main(["run", str(path), f"data.train={probe_file}", f"probe.path={probe_file}", "--out", str(out)]) == 2
    assert "stages.sft.stesp" in capsys.readouterr().err and not out.exists()
    path.write_text(SUITE.replace("runs:", "runz:"))
    with pytest.raises(LdynError, match="unknown suite key 'runz'"):
        load_suite(str(path))


def test_rerunning_a_suite_keeps_finished_runs_and_resumes_the_rest(tmp_path, probe_file):
    path = tmp_path / "mini.yaml"
    path.write_text(SUITE)
    out = tmp_path / "out"
    args = ["run", str(path), f"data.train={probe_file}", f"probe.path={probe_file}", "--out", str(out)]
    assert cli.main(args) == 0
    assert [r["run"] for r in RunDir(out).read("suite.jsonl")] == ["a", "b"]
    assert (out / "report.html").is_file() and "claims" in (out / "report.html").read_text()
    (out / "b" / "checkpoints" / "state.json").unlink()  # as if b had been killed before its first checkpoint
    state = json.loads((out / "a" / "checkpoints" / "state.json").read_text())
    shutil.rmtree(out / "a" / "checkpoints" / state["model"])  # a finished run's weights deleted to save disk
    before = (out / "a" / "metrics.jsonl").read_text()
    assert cli.main(args) == 0
    assert (out / "a" / "metrics.jsonl").read_text() == before  # a was kept, not retrained
    assert [r["run"] for r in RunDir(out).read("suite.jsonl")] == ["a", "b", "b"]
    assert len(RunDir(out / "b").read("metrics.jsonl")) == 2


def test_train_on_the_probe_set(tmp_path, probe_file):
    out = tmp_path / "app"
    args = [
        "run",
        "paper_appendix",
        "data.train=probe",
        f"probe.path={probe_file}",
        "model.name=tiny",
        "stages.train.target=irr_hum",
        "decompose.n=2",
        f"output_dir={out}",
    ]
    assert cli.main(args) == 0
    run = RunDir(out)
    assert json.loads((out / "data.json").read_text())["train_pairs"] == 4  # the probe file's 4 rows
    rows = run.read("decomposition.jsonl")
    assert {r["step"] for r in rows} == {1, 2} and {r["example_id"] for r in rows} == {"0", "1"}
