"""Trackers: ldyn's own trainer writes the probe curves and metrics to TensorBoard; W&B (offline) and trackio open,
log and close; `ldyn export` gives a long table that datasets loads."""

import pytest
from helpers import tiny

from ldyn import cli
from ldyn.runs.directory import RunDir
from ldyn.runs.trackers import open_trackers, probe_scalars


def test_ldyn_run_reports_to_tensorboard(tmp_path):
    assert cli.main(tiny(tmp_path / "run", "report_to=tensorboard")) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("probe/dlogp/chosen")] == [0, 2, 4]
    assert events.Scalars("probe/dlogp/chosen")[0].value == 0.0
    assert {"probe/dlogp/argmax", "probe/a_norm/chosen", "train/loss"} <= set(scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "ldyn/probe_groups" in events.Tags()["images"]


def test_export_is_a_long_table_datasets_loads(tmp_path):
    assert cli.main(tiny(tmp_path / "run")) == 0
    import datasets

    assert cli.main(["export", str(tmp_path / "run")]) == 0
    table = datasets.Dataset.from_parquet(str(tmp_path / "run" / "export" / "probes.parquet"))
    probes = RunDir(tmp_path / "run").read("probes.jsonl")
    assert len(table) == len(probes) and {"step", "example_id", "type", "logp_sum", "dlogp"} <= set(table.features)
    first = {(r["example_id"], r["type"]): r["logp_sum"] for r in probes if r["step"] == 0}
    for row in table.filter(lambda r: r["step"] == 4):
        assert row["dlogp"] == pytest.approx(row["logp_sum"] - first[(row["example_id"], row["type"])])
    assert cli.main(["export", str(tmp_path / "run"), "--format", "csv", "--out", str(tmp_path / "p.csv")]) == 0
    assert len(datasets.Dataset.from_csv(str(tmp_path / "p.csv"))) == len(probes)


@pytest.mark.parametrize("kind", ["wandb", "trackio"])
def test_wandb_offline_and_trackio_log_locally(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.chdir(tmp_path)
    trackers = open_trackers([kind], tmp_path, "test", {"a": 1})
    baseline = {}
    trackers.log(probe_scalars([{"type": "chosen", "logp_sum": -10.0, "a_norm": 5.0}], baseline), 0)
    trackers.log(probe_scalars([{"type": "chosen", "logp_sum": -8.0, "a_norm": 5.0}], baseline), 1)
    trackers.close()
    assert baseline == {"chosen": -10.0}
    if kind == "wandb":
        assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_probe_scalars_are_changes_since_the_first_round():
    baseline = {}
    first = probe_scalars([{"type": "chosen", "logp_sum": -10.0}, {"type": "chosen", "logp_sum": -20.0}], baseline)
    later = probe_scalars([{"type": "chosen", "logp_sum": -9.0}, {"type": "chosen", "logp_sum": -17.0}], baseline)
    assert first == {"probe/dlogp/chosen": 0.0} and later == {"probe/dlogp/chosen": 2.0}
