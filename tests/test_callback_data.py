"""LearningDynamicsCallback on a user's own run: the trainer's data by default, its settings, errors up front."""

import json

import pytest
import yaml
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from ldyn.errors import LdynError
from ldyn.integrations import LearningDynamicsCallback
from ldyn.integrations.trainer_data import probe_rows
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model
from ldyn.runs.directory import RunDir

PAIRS = [{"prompt": f"Question {i}?", "chosen": f" a good answer {i}", "rejected": f" bad {i}"} for i in range(10)]
HELD = [{"prompt": f"Unseen {i}?", "chosen": f" fine reply {i}", "rejected": f" poor {i}"} for i in range(3)]
ARGS = dict(per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1)
ARGS |= dict(seed=0, bf16=False, use_cpu=True, report_to="none")


def dpo(tokenizer, out, callback, eval_rows=HELD, **kw):
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    kw = {"max_steps": 2, "save_strategy": "no"} | kw
    return DPOTrainer(
        model=model,
        ref_model=frozen_copy(model),
        args=DPOConfig(output_dir=str(out), **ARGS, beta=0.1, **kw),
        train_dataset=Dataset.from_list(PAIRS),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=[callback],
    )


def test_no_argument_probes_the_trainers_train_and_eval_prompts_with_derived_types(tokenizer, tmp_path, capsys):
    trainer = dpo(tokenizer, tmp_path, LearningDynamicsCallback(every=1, n=4, held_out=2), max_length=96)
    trainer.train()
    run = RunDir(tmp_path / "ldyn")
    rows = run.read("probes.jsonl")
    ids = {r["example_id"] for r in rows}
    assert ids == {"train/0", "train/1", "train/2", "train/3", "eval/0", "eval/1"}
    types = {r["type"] for r in rows}
    derived = {"irr_train", "irr_test", "random_permute", "random_nonhum"}
    assert {"chosen", "rejected", "argmax", *derived} <= types
    assert sorted({r["step"] for r in rows}) == [0, 1, 2]
    data = json.loads((run.path / "data.json").read_text())
    assert data["probe_held_out"] == ["eval/0", "eval/1"] and data["irr_test_from"] == "eval_dataset"
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    assert config["data"]["max_length"] == 96  # the trainer's, not ldyn's 512
    assert not {"judge", "compile", "cuda_graphs", "checkpoint_every"} & set(config)  # ldyn's trainer's only
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("ldyn: probing")]
    assert line == [f"ldyn: probing 4 train_dataset prompts + 2 eval_dataset ({', '.join(data['probe_types'])}, "
                    f"+ argmax) every 1 steps -> {run.path}"]  # fmt: skip


def test_derived_types_follow_the_paper_rules():
    rows, report = probe_rows(PAIRS, None, 4, 0, seed=3)
    by_id = {r["id"]: r for r in rows}
    chosen = {r["id"]: r["chosen"] for r in rows}
    for r in rows:
        assert r["irr_train"] in chosen.values() and r["irr_train"] != r["chosen"]  # another probed prompt's
        assert r["irr_test"] in [p["chosen"] for p in PAIRS[4:]]  # no eval split: a training row not probed
        assert sorted(r["random_permute"].split()) == sorted(r["chosen"].split())
        assert sorted(r["random_nonhum"].split()) == sorted(r["irr_test"].split())
    assert list(by_id) == ["train/0", "train/1", "train/2", "train/3"] and report["probe_held_out"] == []
    assert probe_rows(PAIRS, None, 4, 0, seed=3)[0] == rows  # seeded


def test_conversational_sft_data_is_probed_as_it_trains(tokenizer, tmp_path):
    conv = [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello there {i}"}]}
        for i in range(6)
    ]
    rows, _ = probe_rows(conv, None, 3, 0, seed=0)
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "hello there 0"}]
    assert rows[0]["random_permute"][0]["role"] == "assistant"  # derived responses keep the assistant form
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), **ARGS, max_steps=2, save_strategy="no", max_length=64),
        train_dataset=Dataset.from_list(conv),
        processing_class=tokenizer,
        callbacks=[LearningDynamicsCallback(every=2, n=3)],
    )
    trainer.train()
    probes = RunDir(tmp_path / "ldyn").read("probes.jsonl")
    assert {r["example_id"] for r in probes} == {"train/0", "train/1", "train/2"}
    assert {"chosen", "irr_train", "irr_test", "random_permute"} <= {r["type"] for r in probes}


def test_a_length_that_disagrees_with_the_trainers_is_one_warning(tokenizer, tmp_path, capsys):
    dpo(tokenizer, tmp_path, LearningDynamicsCallback(every=2, n=2, max_length=80), max_length=96).train()
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ldyn: warning")]
    assert warnings == ["ldyn: warning: probes are tokenised to max_length=80, the trainer trains with max_length=96"]


def test_text_probes_for_conversational_training_are_one_warning(tokenizer, tmp_path, capsys):
    conv = [
        {"prompt": [{"role": "user", "content": f"q {i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]}
        for i in range(4)
    ]  # fmt: skip
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    DPOTrainer(
        model=model,
        ref_model=frozen_copy(model),
        args=DPOConfig(output_dir=str(tmp_path), **ARGS, max_steps=2, save_strategy="no", beta=0.1, max_length=96),
        train_dataset=Dataset.from_list(conv),
        processing_class=tokenizer,
        callbacks=[LearningDynamicsCallback(PAIRS, every=2, n=2)],
    ).train()
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ldyn: warning")]
    assert len(warnings) == 1 and "conversational rows but the probes are text" in warnings[0]


def test_a_string_of_types_is_a_list():
    callback = LearningDynamicsCallback(PAIRS, types="chosen,rejected", n=2)
    assert callback.types == ["chosen", "rejected"]


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"probes": "no/such/probes.jsonl"}, "no such file"),
        ({"types": "chosn,rejected"}, "chosn"),
        ({"types": 5}, "types"),
        ({"types": ["auto", "chosen"]}, "auto"),
        ({"probes": PAIRS, "types": ["chosen", "irr_hum"]}, "irr_hum"),
        ({"probes": PAIRS, "n": 50}, "n=50"),
        ({"n": -1}, "n must be"),
        ({"every": "5"}, "every must be"),
        ({"every": True}, "every must be"),
        ({"held_out": 1.5}, "held_out must be"),
        ({"batch_tokens": 0}, "batch_tokens"),
        ({"max_length": 64, "max_prompt_length": 64}, "max_prompt_length"),
        ({"truncation_mode": "middle"}, "truncation_mode"),
        ({"template": "{question}"}, "template"),
        ({"decompose_method": "exact"}, "decompose_method"),
        ({"probes": 42}, "probes must be"),
        ({"observe_every": 2}, "decompose_every"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_them(kwargs, names):
    with pytest.raises(LdynError, match=names.replace("(", r"\(")):
        LearningDynamicsCallback(**kwargs)


def test_a_trainer_dataset_of_token_ids_asks_for_probes(tokenizer, tmp_path):
    from transformers import Trainer, TrainingArguments

    ids = tokenizer("Question 1? an answer").input_ids
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), **ARGS, max_steps=2, save_strategy="no"),
        train_dataset=Dataset.from_list([{"input_ids": ids, "labels": ids}] * 4),
        processing_class=tokenizer,
        callbacks=[LearningDynamicsCallback(every=2, n=2)],
    )
    with pytest.raises(LdynError, match="pass probes explicitly"):
        trainer.train()


def test_resuming_the_trainer_continues_the_run_directory_without_doubles(tokenizer, tmp_path):
    """`trainer.train(resume_from_checkpoint=...)` after a run that stopped at step 2 of 4: the ldyn run directory
    holds each probe round and each update's metrics once, as an uninterrupted run's."""

    def train(out, resume=None, steps=4, save=False):
        kw = dict(max_length=96, max_steps=steps) | (dict(save_strategy="steps", save_steps=2) if save else {})
        trainer = dpo(tokenizer, out, LearningDynamicsCallback(every=2, n=2), **kw)
        trainer.train(resume_from_checkpoint=resume)
        return RunDir(out / "ldyn")

    whole = train(tmp_path / "whole")
    cut = tmp_path / "cut"
    train(cut, steps=4, save=True)  # checkpoints at 2 and 4; resume from 2 as if killed after it
    resumed = train(cut, resume=str(cut / "checkpoint-2"))
    key = lambda r: (r["step"], r["example_id"], r["type"])  # noqa: E731
    assert sorted(map(key, resumed.read("probes.jsonl"))) == sorted(map(key, whole.read("probes.jsonl")))
    steps = [r["step"] for r in resumed.read("metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_a_probe_file_is_read_once_at_construction_as_a_path_or_under_home(tmp_path, monkeypatch):
    file = tmp_path / "probes.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    monkeypatch.setenv("HOME", str(tmp_path))
    for given in (file, "~/probes.jsonl"):
        callback = LearningDynamicsCallback(given, n=3)
        assert callback.source == str(file)  # a text path, expanded: what the readers take
        examples, types = callback.probe_set  # read here; training begins from it without reading again
        assert [e.id for e in examples] == ["0", "1", "2"] and types == ["chosen", "rejected"]
