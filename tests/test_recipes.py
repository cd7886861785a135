"""Every shipped recipe runs, for one update per stage, on a tiny model (so recipes stay working)."""

import pytest

from ldyn import cli
from ldyn.config import load_config, read_config, recipe_names, recipe_path
from ldyn.runs.directory import RunDir
from ldyn.train.task_data import is_task


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_runs_on_a_tiny_model(name, tmp_path, probe_file):
    generated = is_task(read_config(recipe_path(name)).data.train)  # its own rows, with the fields its reward reads
    paths = [] if generated else [f"data.train={probe_file}", f"probe.path={probe_file}"]
    stages = [s.name for s in load_config(name, paths).stages]
    overrides = [
        *paths,
        "model.name=tiny",
        f"output_dir={tmp_path / 'run'}",
        "data.n_train=4",
        "probe.n=2",
        "probe.every=1",
        "checkpoint_every=0",
    ]
    for stage in stages:
        overrides += [f"stages.{stage}.steps=1", f"stages.{stage}.batch_size=2"]
    assert cli.main(["run", name, *overrides]) == 0
    run = RunDir(tmp_path / "run")
    assert len(run.read("metrics.jsonl")) == len(stages)
    assert {p["step"] for p in run.read("probes.jsonl")} == set(range(len(stages) + 1))
