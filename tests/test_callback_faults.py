"""Faults in a TRL run with LearningDynamicsCallback: kill -9 mid-update or in the middle of a probe round, then
`trainer.train(resume_from_checkpoint=True)` as a user would. The ldyn run directory then holds every row of an
uninterrupted run once -- none lost, none doubled, the same values -- and a probe round cut short is taken again."""

import os
import subprocess
import sys

import pytest

from ldyn.runs.directory import RunDir

TRAIN = """
import os, signal, sys
from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer
import ldyn.runs.directory
from ldyn.integrations import LearningDynamicsCallback
from ldyn.models.pretrained import byte_tokenizer, frozen_copy, prepare, tiny_model

out, point, at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "resume"
die = lambda: os.kill(os.getpid(), signal.SIGKILL)


class KillInUpdate(TrainerCallback):  # the update's gradient taken (and its decomposition begun), not yet applied
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if point == "update" and state.global_step + 1 == at:
            die()


if point == "probe":  # half of the probe round's rows written, then killed
    append = ldyn.runs.directory.append_rows
    def killing_append(path, rows):
        if path.name == "probes.jsonl" and rows and rows[0]["step"] == at:
            append(path, rows[: len(rows) // 2])
            die()
        append(path, rows)
    ldyn.runs.directory.append_rows = killing_append

tokenizer = byte_tokenizer()
model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
pairs = [{"prompt": f"Question {i}?", "chosen": f" a good answer {i}", "rejected": f" bad {i}"} for i in range(12)]
args = DPOConfig(
    output_dir=out, max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3, lr_scheduler_type="constant",
    logging_steps=1, save_strategy="steps", save_steps=2, seed=0, bf16=False, use_cpu=True, report_to="none",
    beta=0.1, max_length=96, disable_tqdm=True,
)
callback = LearningDynamicsCallback(every=2, n=3, decompose_every=1, decompose_n=2, figures=False)
trainer = DPOTrainer(
    model=model, ref_model=frozen_copy(model), args=args, train_dataset=Dataset.from_list(pairs),
    processing_class=tokenizer, callbacks=[callback, KillInUpdate()],
)
trainer.train(resume_from_checkpoint=True if resume else None)
"""


def train(out, point="none", at=0, resume=False):
    return subprocess.run(
        [sys.executable, "-c", TRAIN, str(out), point, str(at), "resume" if resume else "new"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=600,
    )


def records(out):
    run = RunDir(out / "ldyn")
    probes = sorted((r["step"], r["example_id"], r["type"], round(r["logp_sum"], 4)) for r in run.read("probes.jsonl"))
    losses = [(m["step"], round(m["loss"], 5)) for m in run.read("metrics.jsonl") if "loss" in m]
    decomposed = sorted(
        (r["step"], r["example_id"], r["type"], round(r["observed"], 4), round(r["predicted"], 4))
        for r in run.read("decomposition.jsonl")
    )
    rounds = [r["step"] for r in run.read("probe_times.jsonl")]
    return probes, losses, decomposed, rounds


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    done = train(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return records(out)


@pytest.mark.slow
@pytest.mark.parametrize("point,at", [("update", 6), ("update", 4), ("probe", 4), ("probe", 0)])
def test_kill_9_then_resume_from_checkpoint_gives_the_uninterrupted_records(point, at, tmp_path, uninterrupted):
    killed = train(tmp_path, point, at)
    assert killed.returncode == -9, killed.stderr[-3000:]
    probes, _, _, rounds = records(tmp_path)
    if point == "probe":  # the round cut short is on disk, half written, without its time
        assert at not in rounds and any(p[0] == at for p in probes)
    resumed = train(tmp_path, resume=at > 2)  # killed before the first checkpoint (step 2): a new training
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records(tmp_path) == uninterrupted
