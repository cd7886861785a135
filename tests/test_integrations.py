"""LearningDynamicsCallback inside TRL's DPOTrainer and SFTTrainer and transformers' Trainer, on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from helpers import trainer_args as common
from transformers import Trainer, TrainingArguments
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from ldyn import cli
from ldyn.data.probesets import load_probe_set
from ldyn.data.tokenize import tokenize_rows
from ldyn.dynamics.probing import probe, probe_items
from ldyn.integrations import LearningDynamicsCallback
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model
from ldyn.runs.directory import RunDir

ROOT = Path(__file__).parents[1]
PAIRS = [
    {"prompt": f"\n\nHuman: question {i}?\n\nAssistant:", "chosen": f" good answer {i}", "rejected": f" bad {i}"}
    for i in range(8)
]


def dpo_trainer(tokenizer, out, callbacks=(), **kw):
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    args = DPOConfig(**common(out, **kw), beta=0.1, max_length=128)
    return DPOTrainer(
        model=model,
        ref_model=frozen_copy(model),
        args=args,
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def losses(trainer):
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def test_dpo_trainer_writes_a_run_that_ldyn_reads(tokenizer, tmp_path, capsys):
    callback = LearningDynamicsCallback(
        "embedded", every=2, n=3, decompose_every=2, max_length=128, max_prompt_length=64
    )
    trainer = dpo_trainer(tokenizer, tmp_path / "dpo", [callback], report_to="tensorboard")
    initial, _ = prepare(tiny_model(tokenizer, seed=0), tokenizer)  # as `ldyn run` builds it (model.name=tiny)
    examples, _ = load_probe_set("embedded", ["auto"], 3)
    rows = tokenize_rows(trainer.processing_class, [(e.id, e.prompt, e.responses) for e in examples], 128, 64)
    trainer.train()
    run = RunDir(tmp_path / "dpo" / "ldyn")
    probes = run.read("probes.jsonl")
    assert sorted({r["step"] for r in probes}) == [0, 2, 4]
    assert [m["step"] for m in run.read("metrics.jsonl")] == [1, 2, 3, 4]
    assert {r["stage"] for r in probes} == {"dpo"}
    observed = run.read("decomposition.jsonl")
    assert sorted({r["step"] for r in observed}) == [1, 3]  # before the updates at global steps 0 and 2
    assert all("predicted" in r and "observed" in r and "sgd_positive" not in r for r in observed)
    assert [t["step"] for t in run.read("decomposition_times.jsonl")] == [1, 3]
    # step 0 is ldyn's own probe of the initial model, record for record
    direct = {(r["example_id"], r["type"]): r["logp_sum"] for r in probe(initial, probe_items(rows), 0)}
    step0 = {(r["example_id"], r["type"]): r["logp_sum"] for r in probes if r["step"] == 0}
    assert step0.keys() == direct.keys()
    worst = max(direct, key=lambda k: abs(step0[k] - direct[k]))
    assert abs(step0[worst] - direct[worst]) < 1e-4, (worst, step0[worst], direct[worst])
    for command in (
        ["plot"],
        ["report", "--out", str(tmp_path / "r.html")],
        ["export"],
        ["export", "--format", "csv"],
        ["influence", "--out", str(tmp_path / "i.png")],
    ):
        assert cli.main([command[0], str(run.path), *command[1:]]) == 0, command
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = (tmp_path / "dpo" / "runs").iterdir()  # the trainer's own TensorBoard run (ldyn opens none)
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("train/ldyn/dlogp/chosen")] == [0, 2, 4]
    assert "train/ldyn/a_norm/chosen" in events.Tags()["scalars"] and "ldyn/probe_groups" in events.Tags()["images"]


@pytest.mark.parametrize("method", ["jvp", "one_sided"])  # one_sided: each update's observed forward is kept
def test_the_callback_does_not_change_training(tokenizer, tmp_path, method):
    plain = dpo_trainer(tokenizer, tmp_path / "plain")
    plain.train()
    callback = LearningDynamicsCallback(
        "embedded", every=1, n=2, decompose_every=1, max_length=128, decompose_method=method
    )
    probed = dpo_trainer(tokenizer, tmp_path / "probed", [callback])
    probed.train()
    assert losses(probed) == losses(plain) and len(losses(plain)) == 4
    assert {r["step"] for r in RunDir(tmp_path / "probed" / "ldyn").read("decomposition.jsonl")} == {1, 2, 3, 4}


@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")  # dynamo on TRL's own code
def test_the_callback_in_a_compiled_trl_run(tokenizer, tmp_path):
    """`torch_compile=True` (accelerate compiles the model the trainer steps; aot_eager here, for speed): the
    instruments get the eager model -- forward-mode autodiff through it -- and training is what it is without them."""
    plain = dpo_trainer(tokenizer, tmp_path / "plain")
    plain.train()
    callback = LearningDynamicsCallback("embedded", every=1, n=2, decompose_every=1, max_length=128)
    compiled = dpo_trainer(
        tokenizer, tmp_path / "compiled", [callback], torch_compile=True, torch_compile_backend="aot_eager"
    )
    compiled.train()
    assert type(compiled.model_wrapped).__name__ == "OptimizedModule"
    assert losses(compiled) == losses(plain)
    run = RunDir(tmp_path / "compiled" / "ldyn")
    assert {r["step"] for r in run.read("decomposition.jsonl")} == {1, 2, 3, 4}
    assert {r["step"] for r in run.read("probes.jsonl")} == {0, 1, 2, 3, 4}


def test_sft_trainer_and_plain_trainer(tokenizer, tmp_path):
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    data = Dataset.from_list([{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS])
    sft = SFTTrainer(
        model=model,
        args=SFTConfig(**common(tmp_path / "sft"), max_length=128),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[LearningDynamicsCallback(every=2, n=2)],
    )
    sft.train()
    assert sorted({r["step"] for r in RunDir(tmp_path / "sft" / "ldyn").read("probes.jsonl")}) == [0, 2, 4]

    text = [tokenizer(p["prompt"] + p["chosen"]).input_ids for p in PAIRS]
    lm = Dataset.from_list([{"input_ids": ids, "labels": ids} for ids in text])
    model, _ = prepare(tiny_model(tokenizer, seed=1), tokenizer)
    args = TrainingArguments(**common(tmp_path / "lm", per_device_train_batch_size=1))
    Trainer(
        model=model,
        args=args,
        train_dataset=lm,
        processing_class=tokenizer,
        callbacks=[LearningDynamicsCallback("embedded", every=4, n=2)],  # token ids only: no text to probe
    ).train()
    run = RunDir(tmp_path / "lm" / "ldyn")
    assert sorted({r["step"] for r in run.read("probes.jsonl")}) == [0, 4]
    assert cli.main(["plot", str(run.path)]) == 0


@pytest.mark.parametrize("script", ["trl_dpo", "trl_sft"])
def test_the_plain_example_scripts_run_as_written(script, tokenizer, tmp_path, capsys):
    """The examples are plain TRL scripts (from_pretrained, load_dataset, the callback with no argument): run on a
    saved tiny model and a JSONL of the user's own rows, they probe those rows."""
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = PAIRS if script == "trl_dpo" else [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        module = __import__(script)
    finally:
        sys.path.pop(0)
    out = tmp_path / "out"
    module.main(["--model", str(tmp_path / "model"), "--data", str(data), "--steps", "2", "--out", str(out)])
    probes = RunDir(out / "ldyn").read("probes.jsonl")
    assert {r["step"] for r in probes} == {0, 2}
    assert all(r["example_id"].startswith(("train/", "eval/")) for r in probes)
    assert "ldyn: probing" in capsys.readouterr().out


# ---------------------------------------------------------------- two processes (torchrun, gloo) against one


def launch(tmp_path, name, world, *command):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    # --standalone: a free port of its own, so two runs of the suite on one machine never meet
    runner = ["torchrun", "--standalone", "--nproc_per_node", str(world)] if world > 1 else [sys.executable]
    out = subprocess.run([*runner, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return RunDir(tmp_path / name)


def assert_same(one: RunDir, two: RunDir, loss_key="loss"):
    m1, m2 = one.read("metrics.jsonl"), two.read("metrics.jsonl")
    assert [m["step"] for m in m1] == [m["step"] for m in m2] and m1
    for a, b in zip(m1, m2):
        assert b[loss_key] == pytest.approx(a[loss_key], rel=1e-5)
    key = lambda r: (r["step"], r["example_id"], r["type"])  # noqa: E731
    p1, p2 = ({key(r): r["logp_sum"] for r in run.read("probes.jsonl")} for run in (one, two))
    assert p1.keys() == p2.keys() and p1
    assert max(abs(p1[k] - p2[k]) / abs(p1[k]) for k in p1) < 1e-5  # fp32: the sums are hundreds of nats


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_two_processes_equal_one_for_ldyn_run(tmp_path):
    args = [
        "smollm2_sft_dpo",
        "model.name=tiny",
        "stages.sft.steps=2",
        "stages.dpo.steps=3",
        "stages.*.batch_size=2",
        "probe.n=3",
        "probe.every=2",
        "data.n_train=6",
    ]
    one = launch(tmp_path, "one", 1, "-m", "ldyn.cli", "run", *args, "output_dir=one")
    two = launch(tmp_path, "two", 2, "-m", "ldyn.cli", "run", *args, "output_dir=two")
    assert_same(one, two)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_two_processes_equal_one_for_the_trl_callback(tmp_path):
    args = [
        str(ROOT / "tests" / "trl_dpo_tiny.py"),
        "--model",
        "tiny",
        "--steps",
        "3",
        "--every",
        "1",
        "--n-train",
        "8",
        "--n-probe",
        "3",
        "--max-length",
        "128",
        "--max-prompt-length",
        "64",
    ]
    one = launch(tmp_path, "one/ldyn", 1, *args, "--batch-size", "2", "--out", "one")
    two = launch(tmp_path, "two/ldyn", 2, *args, "--batch-size", "1", "--out", "two")  # 2 × 1 = the same batch
    assert_same(one, two)
    assert json.loads((tmp_path / "two/ldyn/data.json").read_text())["trainer"] == "DPOConfig"


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_probing_a_sharded_model_takes_every_process_through_every_forward(tmp_path):
    """FSDP2 on CPU: each forward all-gathers the parameters, so a process with fewer prompts must still join every
    pass of the busiest one (else this test hangs until its timeout)."""
    launch(tmp_path, ".", 2, str(ROOT / "tests" / "fsdp_probe.py"), str(tmp_path / "fsdp.json"))
    result = json.loads((tmp_path / "fsdp.json").read_text())
    assert result["keys_equal"] and result["max_rel"] < 1e-5


def test_the_callback_works_with_a_lora_adapter(tokenizer, tmp_path):
    """TRL's peft_config: probing runs through the PeftModel, and the observed change of an update follows the
    first-order prediction along the adapter's real step (only the adapter's parameters move)."""
    from peft import LoraConfig

    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    callback = LearningDynamicsCallback(
        "embedded", every=2, n=2, decompose_every=2, max_length=128, max_prompt_length=64
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = DPOConfig(**common(tmp_path / "lora"), beta=0.1, max_length=128)
    DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
        callbacks=[callback],
        peft_config=lora,
    ).train()
    run = RunDir(tmp_path / "lora" / "ldyn")
    assert sorted({r["step"] for r in run.read("probes.jsonl")}) == [0, 2, 4]
    rows = run.read("decomposition.jsonl")
    assert rows and all(abs(r["predicted"] - r["observed"]) <= 0.1 * abs(r["observed"]) + 1e-4 for r in rows)
