"""Bad arguments to LearningDynamicsCallback, table-driven: one LdynError naming the argument at construction,
before any trainer loads anything; what only the trainer knows fails when training begins, before the run
directory is made."""

import json
import re

import pytest
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from ldyn.errors import LdynError
from ldyn.integrations import LearningDynamicsCallback
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model

PAIRS = [{"prompt": f"Question {i}?", "chosen": f" a good answer {i}", "rejected": f" bad {i}"} for i in range(6)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("callback")
    (root / "afile").write_text("not a folder")
    lines = [json.dumps(PAIRS[0]), "{oops", json.dumps(PAIRS[1])]
    (root / "broken.jsonl").write_text("\n".join(lines) + "\n")
    return root


CALLBACK_CASES = {  # name: (keyword arguments, given the files' folder; what the error must say)
    "types as characters": (lambda r: {"types": ["chosen,rejected"]}, "field 'types': unknown probe type 'chosen,"),
    "unknown type": (lambda r: {"types": "chosen,rejectd"}, "field 'types': unknown probe type 'rejectd' (did you "),
    "types not a list": (lambda r: {"types": 5}, "field 'types': expected a list"),
    "types empty": (lambda r: {"types": ""}, "field 'types': names no type"),
    "types auto and more": (lambda r: {"types": ["auto", "chosen"]}, "'auto' stands alone"),
    "every negative": (lambda r: {"every": -1}, "field 'every': every must be a whole number >= 0, got -1"),
    "every a bool": (lambda r: {"every": True}, "field 'every':"),
    "every a float": (lambda r: {"every": 2.5}, "field 'every':"),
    "n a string": (lambda r: {"n": "4"}, "field 'n':"),
    "held_out negative": (lambda r: {"held_out": -2}, "field 'held_out':"),
    "held_out with a probe set": (lambda r: {"probes": PAIRS, "held_out": 2}, "field 'held_out': counts the"),
    "decompose_every negative": (lambda r: {"decompose_every": -1}, "field 'decompose_every':"),
    "decompose_n zero": (lambda r: {"decompose_n": 0}, "field 'decompose_n': decompose_n must be a whole number >= 1"),
    "batch_tokens zero": (lambda r: {"batch_tokens": 0}, "field 'batch_tokens':"),
    "seed a float": (lambda r: {"seed": 0.5}, "field 'seed':"),
    "unknown decompose_method": (lambda r: {"decompose_method": "exact"}, "field 'decompose_method': unknown value"),
    "unknown truncation_mode": (lambda r: {"truncation_mode": "middle"}, "field 'truncation_mode': unknown value"),
    "unknown template": (lambda r: {"template": "{question}"}, "field 'template': must be one of"),
    "template not a string": (lambda r: {"template": 3}, "field 'template': must be a string"),
    "max_length zero": (lambda r: {"max_length": 0}, "field 'max_length':"),
    "max_prompt_length negative": (lambda r: {"max_prompt_length": -1}, "field 'max_prompt_length':"),
    "prompt as long as the total": (
        lambda r: {"max_length": 64, "max_prompt_length": 64},
        "field 'max_prompt_length': must be below max_length (64)",
    ),
    "decompose_predict not a bool": (lambda r: {"decompose_predict": "no"}, "field 'decompose_predict':"),
    "output_dir is a file": (lambda r: {"output_dir": str(r / "afile")}, "field 'output_dir': is a file"),
    "output_dir under a file": (lambda r: {"output_dir": r / "afile" / "run"}, "afile is a file, not a folder"),
    "missing probe file": (lambda r: {"probes": str(r / "nope.jsonl")}, "field 'probes': no such file"),
    "malformed probe file": (lambda r: {"probes": str(r / "broken.jsonl")}, "broken.jsonl:2: malformed JSON"),
    "empty probe rows": (lambda r: {"probes": []}, "field 'probes': holds no rows"),
    "probe rows not dicts": (lambda r: {"probes": [1, 2]}, "field 'probes': row 1 must be a dict"),
    "probe rows without a prompt": (lambda r: {"probes": [{"question": "Q"}]}, "<rows>:1: no prompt"),
    "probes of another kind": (lambda r: {"probes": 42}, "field 'probes':"),
}


@pytest.mark.parametrize("case", list(CALLBACK_CASES))
def test_a_bad_argument_is_one_error_naming_it(case, files):
    make, expected = CALLBACK_CASES[case]
    with pytest.raises(LdynError, match=re.escape(expected)):
        LearningDynamicsCallback(**make(files))


def test_there_are_at_least_twelve_cases():
    assert len(CALLBACK_CASES) >= 12


def test_valid_arguments_read_as_before():
    assert LearningDynamicsCallback(PAIRS, types="chosen,rejected", n=2).types == ["chosen", "rejected"]
    assert LearningDynamicsCallback(PAIRS, types="[chosen, rejected]", n=2).types == ["chosen", "rejected"]
    assert LearningDynamicsCallback(PAIRS, types=("chosen",), n=2).types == ["chosen"]
    assert LearningDynamicsCallback(max_length=None, max_prompt_length=None).lengths == (None, None)


ARGS = dict(per_device_train_batch_size=2, max_steps=1, save_strategy="no", beta=0.1)
ARGS |= dict(use_cpu=True, bf16=False, report_to="none")


def dpo(tokenizer, out, callback, **kw):
    """A tiny TRL DPOTrainer with the callback, on PAIRS and no eval_dataset."""
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    return DPOTrainer(
        model=model,
        ref_model=frozen_copy(model),
        args=DPOConfig(output_dir=str(out), **ARGS, **kw),
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
        callbacks=[callback],
    )


TRAIN_TIME = {  # name: (the callback's arguments, the trainer's, what the error must say)
    "max_length above the trainer's": (
        {"max_length": 128},
        {"max_length": 96},
        "field 'max_length': 128 is above the trainer's max_length (96)",
    ),
    "prompt not below the trainer's max_length": (
        {"max_prompt_length": 96},
        {"max_length": 96},
        "field 'max_prompt_length': must be below max_length (96, the trainer's), got 96",
    ),
    "held_out without an eval_dataset": ({"held_out": 2}, {"max_length": 96}, "field 'held_out': 2 eval prompts"),
}


@pytest.mark.parametrize("case", list(TRAIN_TIME))
def test_what_only_the_trainer_knows_fails_when_training_begins_and_leaves_no_run(case, tokenizer, tmp_path):
    given, trainer_args, expected = TRAIN_TIME[case]
    trainer = dpo(tokenizer, tmp_path / "out", LearningDynamicsCallback(every=1, n=2, **given), **trainer_args)
    with pytest.raises(LdynError, match=re.escape(expected)):
        trainer.train()
    out = tmp_path / "out"
    assert not (out / "ldyn").exists() and not (out / ".ldyn.lock").exists()


def test_a_probe_file_may_hold_types_of_its_own_which_its_reader_checks():
    rows = [p | {"paraphrase": " a fine answer"} for p in PAIRS]
    assert LearningDynamicsCallback(rows, types="chosen,paraphrase", n=2).types == ["chosen", "paraphrase"]
    with pytest.raises(LdynError, match="'paraphrse' is not in this file"):
        LearningDynamicsCallback(rows, types="chosen,paraphrse", n=2)
