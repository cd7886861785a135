"""The `probe/responses` table: each probe round's (step, prompt, type, texts, log π, Δ log π) rows to W&B
(offline, one incremental table), trackio (local, a table per round) and TensorBoard (a Markdown text), from
ldyn's own trainer and into a host trainer's trackers (`trainer_log.tables_to_trainer`)."""

import json
import sys
from pathlib import Path

import pytest
from helpers import tiny

from ldyn import cli
from ldyn.integrations.trainer_log import tables_to_trainer
from ldyn.runs.directory import PROBE_SET, RunDir
from ldyn.runs.trackers import PROBE_TABLE, TABLE_COLUMNS, first_logps, markdown_table, open_trackers, probe_rows

TEXTS = {("a", "prompt"): "Is | it?\nSay.", ("a", "chosen"): "Yes.", ("b", "prompt"): "Why?"}


def rounds():
    """Two rounds of two prompts: chosen rises by 1 then 3 nats; the argmax has no text of its own."""
    first: dict = {}
    out = []
    for step, rise in ((0, 0.0), (2, 1.0)):
        records = [
            {"example_id": "a", "type": "chosen", "logp_sum": -10.0 + rise},
            {"example_id": "a", "type": "argmax", "logp_sum": -4.0},
            {"example_id": "b", "type": "chosen", "logp_sum": -20.0 + 3 * rise},
        ]
        out.append((step, probe_rows(records, step, TEXTS, first)))
    return out


def test_probe_rows_hold_the_texts_and_the_change_since_the_first_round():
    (_, zero), (_, two) = rounds()
    assert zero[0] == [0, "a", "Is | it?\nSay.", "chosen", "Yes.", -10.0, 0.0]
    assert two[0][-2:] == [-9.0, 1.0] and two[2][-1] == 3.0
    assert two[1][4] == "" and two[2][2:5] == ["Why?", "chosen", ""]  # no stored text: empty; no prompt: the id
    assert probe_rows([{"example_id": "c", "type": "chosen", "logp_sum": -1.0}], 0, {}, {})[0][2] == "c"
    rows = [{"step": 4, "example_id": "a", "type": "chosen", "logp_sum": None}]
    assert str(first_logps(rows)[("a", "chosen")]) == "nan"  # a non-finite value, stored as null


def test_the_markdown_table_keeps_each_row_on_one_line():
    text = markdown_table(rounds()[0][1], TABLE_COLUMNS)
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and lines[0].startswith("| step | example_id | prompt")
    assert "Is \\| it?<br>Say." in lines[2] and "-10.0000" in lines[2]


def wandb_files(root: Path) -> list[dict]:
    """The table files of the one offline W&B run under `root`, in the order logged."""
    (run,) = (root / "wandb").glob("offline-run-*")
    files = sorted((run / "files" / "media" / "table").rglob("*.table.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in files]


def local_trackio(monkeypatch, folder: Path):
    """trackio's local database under `folder` (TRACKIO_DIR is read once at import: patched where it was copied)."""
    monkeypatch.setenv("TRACKIO_DIR", str(folder))
    import trackio.utils

    default = trackio.utils.TRACKIO_DIR
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "trackio" and module is not None:
            for attr in ("TRACKIO_DIR", "MEDIA_DIR", "ARTIFACTS_DIR"):
                value = getattr(module, attr, None)
                if isinstance(value, Path) and (value == default or default in value.parents):
                    monkeypatch.setattr(module, attr, folder / value.relative_to(default))


def trackio_tables(project: str) -> list[tuple[int, list[dict]]]:
    from trackio.sqlite_storage import SQLiteStorage

    (run,) = SQLiteStorage.get_runs(project)
    logs = SQLiteStorage.get_logs(project, run)
    steps = [row.get("train/global_step", row["step"]) for row in logs]  # a host trainer's: its global step
    return [(step, row[PROBE_TABLE]["_value"]) for step, row in zip(steps, logs) if PROBE_TABLE in row]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_wandb_gets_one_table_extended_by_each_rounds_rows(offline):
    wandb = pytest.importorskip("wandb")
    trackers = open_trackers(["wandb"], offline, "test")
    for step, rows in rounds():
        trackers.table(PROBE_TABLE, rows, TABLE_COLUMNS, step)
    trackers.close()
    wandb.teardown()
    first, second = wandb_files(offline)
    assert first["columns"] == second["columns"] == TABLE_COLUMNS
    assert [r[0] for r in first["data"]] == [0, 0, 0] and [r[0] for r in second["data"]] == [2, 2, 2]  # new rows only
    assert second["data"][0][2:] == ["Is | it?\nSay.", "chosen", "Yes.", -9.0, 1.0]


def test_trackio_gets_a_table_per_round(offline, monkeypatch):
    pytest.importorskip("trackio")
    local_trackio(monkeypatch, offline / "trackio")
    trackers = open_trackers(["trackio"], offline, "test")
    for step, rows in rounds():
        trackers.table(PROBE_TABLE, rows, TABLE_COLUMNS, step)
    trackers.close()
    tables = trackio_tables("ldyn")
    assert [step for step, _ in tables] == [0, 2]
    assert tables[1][1][2] == dict(zip(TABLE_COLUMNS, [2, "b", "Why?", "chosen", "", -17.0, 3.0]))


def test_ldyn_run_writes_a_table_per_probe_round_to_tensorboard(tmp_path):
    assert cli.main(tiny(tmp_path / "run", "report_to=tensorboard")) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tag = f"{PROBE_TABLE}/text_summary"
    assert tag in events.Tags()["tensors"]
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)}
    assert sorted(texts) == [0, 2, 4]
    probes = RunDir(tmp_path / "run").read("probes.jsonl")
    assert len(texts[4].splitlines()) == 2 + sum(r["step"] == 4 for r in probes)  # every record of the round
    prompts = [r["text"] for r in RunDir(tmp_path / "run").read(PROBE_SET) if r["type"] == "prompt"]
    assert prompts  # the probed texts the run kept (probe_set.jsonl), as the table's cells
    assert all(markdown_table([[text]], ["x"]).splitlines()[-1].strip("| ") in texts[0] for text in prompts)
    assert all(example_id in texts[0] for example_id in {r["example_id"] for r in probes})


class Handler:
    def __init__(self, callbacks):
        self.callbacks = callbacks


def test_a_host_trainers_wandb_and_trackio_runs_get_the_table(offline, monkeypatch):
    wandb = pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    import trackio
    from transformers.integrations import TrackioCallback, WandbCallback

    local_trackio(monkeypatch, offline / "trackio")
    wandb.init(project="host", dir=str(offline), mode="offline")  # the host trainer's runs
    trackio.init(project="host", name="host")
    callbacks = [WandbCallback(), TrackioCallback()]
    for callback in callbacks:
        callback._initialized = True
    try:
        for step, rows in rounds():
            tables_to_trainer(Handler(callbacks), PROBE_TABLE, rows, TABLE_COLUMNS, step)
        tables_to_trainer(None, PROBE_TABLE, rows, TABLE_COLUMNS, 4)  # no trainer: nothing, no error
    finally:
        wandb.finish()
        wandb.teardown()
        trackio.finish()
    assert [len(t["data"]) for t in wandb_files(offline)] == [3, 3]
    assert [step for step, _ in trackio_tables("host")] == [0, 2]
