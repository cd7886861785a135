"""The callback on a TRL user's own run: ldyn's scalars and figures go through the trainer's own log stream (one
run per tracker, the trainer's), the run directory describes what was trained, and the progress bar follows
`disable_tqdm`. Tiny model, CPU."""

import json
import struct
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from helpers import trainer_args
from transformers import TrainerState
from trl import DPOConfig, DPOTrainer

from ldyn.config import DataConfig, DecomposeConfig, ProbeConfig, RunConfig, dump_config, read_config
from ldyn.integrations import LearningDynamicsCallback
from ldyn.integrations.host import describe_run
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model
from ldyn.paper.report import write_report
from ldyn.runs.compare import run_labels
from ldyn.runs.directory import RunDir, load_run

PAIRS = [
    {"prompt": f"\n\nHuman: question {i}?\n\nAssistant:", "chosen": f" good answer {i}", "rejected": f" bad {i}"}
    for i in range(8)
]


def trainer_for(tokenizer, out, callback, **kw):
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    settings = trainer_args(out, beta=0.1, max_length=128)
    return DPOTrainer(
        model=model,
        ref_model=frozen_copy(model),
        args=DPOConfig(**settings | kw),
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
        callbacks=[callback],
    )


def callback(**kw):
    return LearningDynamicsCallback("embedded", **dict(every=2, n=2, max_length=128, max_prompt_length=64) | kw)


def steps_with(history, key):
    return [row["step"] for row in history if key in row]


# ---------------------------------------------------------------- one log stream: the trainer's


def test_scalars_and_figures_go_to_the_trainers_tensorboard_run(tokenizer, tmp_path, capsys):
    trainer = trainer_for(tokenizer, tmp_path / "dpo", callback(decompose_every=2), report_to="tensorboard")
    trainer.train()
    history = trainer.state.log_history
    assert steps_with(history, "ldyn/dlogp/chosen") == [0, 2, 4]
    assert steps_with(history, "ldyn/a_norm/chosen") == [0, 2, 4]
    assert steps_with(history, "ldyn/observed/chosen") == [1, 3]  # decompose_every=2: the updates from steps 0, 2
    assert steps_with(history, "ldyn/predicted/rejected") == [1, 3]
    assert steps_with(history, "loss") == [1, 2, 3, 4]  # the trainer's own lines, unchanged
    assert all("rewards/margins" in row for row in history if "loss" in row)  # TRL's metrics stay in its lines
    assert "ldyn/dlogp/chosen" in capsys.readouterr().out  # the console's log line
    run = RunDir(tmp_path / "dpo" / "ldyn")
    assert not (run.path / "tensorboard").exists()  # no folder of ldyn's own
    assert not any("ldyn/" in k for m in run.read("metrics.jsonl") for k in m)  # the trainer's metrics only
    folders = list((tmp_path / "dpo" / "runs").iterdir())
    assert len(folders) == 1  # the trainer's one TensorBoard run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folders[0]), size_guidance={"images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("train/ldyn/dlogp/chosen")] == [0, 2, 4]
    assert [e.step for e in events.Scalars("train/ldyn/observed/chosen")] == [1, 3]
    assert "train/ldyn/a_norm/rejected" in scalars
    assert "ldyn/probe_groups" in events.Tags()["images"]
    assert (run.path / "figures" / "probe_groups.png").is_file()


def test_the_last_round_is_logged_when_training_ends_between_probe_steps(tokenizer, tmp_path):
    trainer = trainer_for(tokenizer, tmp_path / "dpo", callback(every=3), max_steps=4, report_to="tensorboard")
    trainer.train()
    assert steps_with(trainer.state.log_history, "ldyn/dlogp/chosen") == [0, 3, 4]
    assert sorted({r["step"] for r in RunDir(tmp_path / "dpo" / "ldyn").read("probes.jsonl")}) == [0, 3, 4]


def test_scalars_and_figures_go_to_the_trainers_wandb_run(tokenizer, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "ldyn-test")
    trainer = trainer_for(tokenizer, tmp_path / "dpo", callback(), report_to="wandb")
    try:
        trainer.train()
    finally:
        wandb.finish()
        wandb.teardown()  # the service has written the run file out
    assert steps_with(trainer.state.log_history, "ldyn/dlogp/chosen") == [0, 2, 4]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # the trainer's run, no second one
    history = wandb_history(next(runs[0].glob("run-*.wandb")))
    assert steps_with(history, "train/loss") == [1, 2, 3, 4]
    assert steps_with(history, "train/ldyn/dlogp/chosen") == [0, 2, 4]
    assert any("ldyn/probe_groups/path" in row for row in history)  # the figures, as images
    assert not any("ldyn/step" in row for row in history)  # the trainer's step, no step key of ldyn's


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline W&B run file (LevelDB log blocks of protobuf Records), "step" the trainer's
    global step."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunk, rows = path.read_bytes(), 32768, 7, b"", []  # after the 7-byte ":W&B" header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                rows.append(row | {"step": row.get("train/global_step")})
    return rows


def local_trackio(monkeypatch, folder: Path):
    """trackio's local database under `folder` (TRACKIO_DIR, read once at import: patched where it was copied)."""
    monkeypatch.setenv("TRACKIO_DIR", str(folder))
    import trackio.utils

    default = trackio.utils.TRACKIO_DIR
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "trackio" and module is not None:
            for attr in ("TRACKIO_DIR", "MEDIA_DIR", "ARTIFACTS_DIR"):
                value = getattr(module, attr, None)
                if isinstance(value, Path) and (value == default or default in value.parents):
                    monkeypatch.setattr(module, attr, folder / value.relative_to(default))


def test_scalars_and_figures_go_to_the_trainers_trackio_run(tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    local_trackio(monkeypatch, tmp_path / "trackio")
    from trackio.sqlite_storage import SQLiteStorage

    trainer = trainer_for(tokenizer, tmp_path / "dpo", callback(), report_to="trackio", project="ldyn-test")
    trainer.train()  # ldyn opened no run of its own: trackio's callback finishes the trainer's without error
    assert steps_with(trainer.state.log_history, "ldyn/dlogp/chosen") == [0, 2, 4]
    runs = SQLiteStorage.get_runs("ldyn-test")
    assert len(runs) == 1 and SQLiteStorage.get_projects() == ["ldyn-test"]
    logs = SQLiteStorage.get_logs("ldyn-test", runs[0])
    probed = [row["train/global_step"] for row in logs if "train/ldyn/dlogp/chosen" in row]
    assert probed == [0, 2, 4] and [row["train/global_step"] for row in logs if "train/loss" in row] == [1, 2, 3, 4]
    assert any("ldyn/probe_groups" in row for row in logs)


# ---------------------------------------------------------------- a truthful run directory


def describe(tokenizer, tmp_path, model=None, **kw):
    if model is None:
        model, _ = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, **dict(report_to="none") | kw)
    return describe_run(
        args,
        TrainerState(max_steps=4),
        model,
        run_dir=tmp_path / "out" / "ldyn",
        data=DataConfig(),
        probe=ProbeConfig(),
        decompose=DecomposeConfig(),
    )


def test_the_config_records_the_lora_adapter_trackers_and_run_name(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["v_proj", "q_proj"], task_type="CAUSAL_LM")
    cfg = describe(tokenizer, tmp_path, get_peft_model(model, lora), run_name="my-run", report_to=["tensorboard"])
    assert (cfg.model.peft.r, cfg.model.peft.alpha, cfg.model.peft.dropout) == (4, 8.0, 0.05)
    assert cfg.model.peft.target_modules == ["q_proj", "v_proj"]
    assert cfg.name == "my-run" and cfg.report_to == ["tensorboard"]
    assert "LoRA r=4" in cfg.describe()
    plain = describe(tokenizer, tmp_path, report_to="none")
    assert plain.model.peft.r == 0 and plain.report_to == ["none"] and plain.name == "out"
    assert describe(tokenizer, tmp_path, run_name=str(tmp_path / "out")).name == "out"  # transformers' old default


def test_a_trl_lora_run_writes_its_adapter_into_config_yaml(tokenizer, tmp_path):
    from peft import LoraConfig

    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    args = DPOConfig(
        output_dir=str(tmp_path / "lora"), max_steps=1, per_device_train_batch_size=2, save_strategy="no",
        use_cpu=True, report_to="none", max_length=128, run_name="lora-dpo",
    )  # fmt: skip
    DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
        callbacks=[callback(every=1)],
        peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    ).train()
    cfg = read_config(tmp_path / "lora" / "ldyn" / "config.yaml")
    assert (cfg.name, cfg.model.peft.r, cfg.model.peft.alpha, cfg.model.peft.target_modules) == (
        "lora-dpo",
        2,
        4.0,
        ["q_proj"],
    )


def fake_run(folder: Path, name: str) -> Path:
    run = RunDir(folder)
    run.path.mkdir(parents=True)
    run.write_text("config.yaml", dump_config(RunConfig(name=name, output_dir=str(folder))))
    rows = [{"step": s, "stage": "dpo", "example_id": "e0", "type": "chosen", "logp_sum": -1.0 - s} for s in (0, 2)]
    run.append("probes.jsonl", rows)
    return run.path


def test_runs_in_folders_of_one_name_are_labelled_by_their_config_name(tmp_path):
    a, b = fake_run(tmp_path / "a" / "ldyn", "dpo-a"), fake_run(tmp_path / "b" / "ldyn", "dpo-b")
    assert run_labels([load_run(a), load_run(b)]) == ["dpo-a", "dpo-b"]
    same = fake_run(tmp_path / "c" / "ldyn", "dpo-a")  # one name, one folder name: as much path as tells them apart
    assert run_labels([load_run(a), load_run(same)]) == ["a/ldyn", "c/ldyn"]
    page = write_report([a, b], tmp_path / "report.html").read_text()
    assert "<td>dpo-a</td>" in page and "<td>dpo-b</td>" in page and "<td>ldyn</td>" not in page


# ---------------------------------------------------------------- the progress bar


@pytest.mark.parametrize("disable", [True, False])
def test_the_probe_bar_follows_disable_tqdm(tokenizer, tmp_path, capfd, disable):
    trainer_for(tokenizer, tmp_path / "dpo", callback(every=4), disable_tqdm=disable, max_steps=1).train()
    err = capfd.readouterr().err
    assert ("probe:" in err) != disable, err[-2000:]
