"""LearningDynamicsCallback inside TRL's GRPOTrainer and RLOOTrainer, on the tiny model: a dataset with fixed
responses probes them; a prompt-only one probes the trainer's own step-0 rollouts, split by reward."""

import json
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from helpers import trainer_args as common
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from ldyn import cli
from ldyn.config import DataConfig
from ldyn.data.probesets import load_probe_set
from ldyn.dynamics.probing import probe, tokenized_probe_items
from ldyn.errors import LdynError
from ldyn.integrations import LearningDynamicsCallback, arguments
from ldyn.integrations.rollouts import rollout_rows
from ldyn.integrations.trainer_data import probe_rows
from ldyn.models.pretrained import prepare, tiny_model
from ldyn.rl.tasks import arithmetic_rows
from ldyn.runs.directory import RunDir

ROWS = arithmetic_rows(8, seed=0)  # prompt (one user turn), chosen, rejected, *_gptsemantic, rejected_far, answer
PROMPT_ONLY = [{"prompt": r["prompt"], "answer": r["answer"]} for r in ROWS]


class Reward:
    """A reward with TRL's signature that keeps what it was given: 1 for a completion whose first character has an
    even code point (about half of the tiny model's samples), else 0."""

    __name__ = "parity"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, answer, **kw):
        rewards = [float(ord((c[0]["content"] or "\0")[0]) % 2 == 0) for c in completions]
        self.calls.append((prompts, completions, rewards))
        return rewards


def rl_trainer(tokenizer, out, rows, callbacks=(), kind="grpo", reward=None, **kw):
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    Config, Trainer = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    settings = common(out, max_steps=3, per_device_train_batch_size=8, report_to=[], **kw)
    # beta=0: no reference model (RLOO would load one from the model's path, which an in-memory model has not)
    args = Config(**settings, num_generations=4, max_completion_length=8, use_vllm=False, beta=0.0)
    return Trainer(
        model=model,
        reward_funcs=[reward or Reward()],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def history(trainer):
    keys = ("loss", "grad_norm", "reward", "reward_std", "entropy")
    return [{k: row[k] for k in keys if k in row} for row in trainer.state.log_history if "loss" in row]


def test_grpo_probes_its_step_0_rollouts_split_by_reward(tokenizer, tmp_path, capsys):
    reward = Reward()
    trainer = rl_trainer(tokenizer, tmp_path, PROMPT_ONLY, [LearningDynamicsCallback(every=2)], reward=reward)
    initial, _ = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    trainer.train()
    run = RunDir(tmp_path / "ldyn")
    records = run.read("probes.jsonl")
    assert sorted({r["step"] for r in records}) == [0, 2, 3] and {r["stage"] for r in records} == {"grpo"}
    types = {r["type"] for r in records}
    assert {"chosen", "rollout_correct", "rollout_incorrect", "argmax", "irr_train", "random_permute"} <= types
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("ldyn: probing")]
    assert line and line[0].startswith("ldyn: probing 2 prompts of the trainer's step-0 rollouts (chosen, rollout_")

    # the probed responses are the first update's samples, each where its reward puts it
    prompts, completions, rewards = reward.calls[0]
    kept = json.loads((run.path / "data.json").read_text())["rollouts"]
    assert [r["id"] for r in kept] == ["rollout/0", "rollout/1"]
    for row in kept:
        group = [(c, r) for p, c, r in zip(prompts, completions, rewards) if p == row["prompt"]]
        assert len(group) == 4
        assert row["chosen"] in [c for c, r in group if r == max(r for _, r in group)]
        assert "rollout_correct" not in row or row["rollout_correct"] in [c for c, r in group if r >= 1]
        assert "rollout_incorrect" not in row or row["rollout_incorrect"] in [c for c, r in group if r < 1]
    assert any("rollout_correct" in r for r in kept) and any("rollout_incorrect" in r for r in kept)

    # step 0 is probed before the first update (it samples the rollouts): the initial model's log-probs
    rows, _ = rollout_rows(trainer, 16, 0, run.path)  # global_step > 0: the rows data.json kept
    data = DataConfig(train="host trainer")
    arguments.settle_lengths(data, (None, None), trainer.args)
    examples, used = load_probe_set(rows, sorted(types - {"argmax", "except_argmax"}), 0)
    items, _ = tokenized_probe_items(examples, used, trainer.processing_class, data)
    direct = {
        (r["example_id"], r["type"]): r["logp_sum"]
        for r in probe(initial, items, trainer.processing_class.pad_token_id)
    }
    step0 = {(r["example_id"], r["type"]): r["logp_sum"] for r in records if r["step"] == 0}
    assert step0.keys() == direct.keys()
    assert max(abs(step0[k] - direct[k]) for k in direct) < 1e-4
    for command in (["plot"], ["report", "--out", str(tmp_path / "r.html")], ["export"]):
        assert cli.main([command[0], str(run.path), *command[1:]]) == 0, command


@pytest.mark.parametrize("rows", [PROMPT_ONLY, ROWS], ids=["rollouts", "fixed_responses"])
def test_the_callback_does_not_change_grpo_training(tokenizer, tmp_path, rows):
    """GRPO samples with the torch RNG, which the trainer seeds; the probes draw nothing from it and run in no_grad
    mode, so the same seed samples, rewards and updates alike with the callback or without it."""
    plain = rl_trainer(tokenizer, tmp_path / "plain", rows)
    plain.train()
    callback = LearningDynamicsCallback(every=1, n=2, decompose_every=1)
    probed = rl_trainer(tokenizer, tmp_path / "probed", rows, [callback])
    probed.train()
    assert history(probed) == history(plain) and len(history(plain)) == 3
    for (name, a), b in zip(plain.model.named_parameters(), probed.model.parameters()):
        assert torch.equal(a, b), name
    run = RunDir(tmp_path / "probed" / "ldyn")
    assert {r["step"] for r in run.read("probes.jsonl")} == {0, 1, 2, 3}
    assert {r["step"] for r in run.read("decomposition.jsonl")} == {1, 2, 3}


def test_grpo_with_fixed_responses_probes_them(tokenizer, tmp_path):
    trainer = rl_trainer(tokenizer, tmp_path, ROWS, [LearningDynamicsCallback(every=2, n=3)])
    trainer.train()
    records = RunDir(tmp_path / "ldyn").read("probes.jsonl")
    assert sorted({r["step"] for r in records}) == [0, 2, 3] and {r["stage"] for r in records} == {"grpo"}
    assert {r["example_id"] for r in records} == {r["id"] for r in ROWS[:3]}  # the rows' own ids
    fixed = {"chosen", "rejected", "chosen_gptsemantic", "reject_gptsemantic", "rejected_far"}
    assert fixed <= {r["type"] for r in records} and not any(r["type"].startswith("rollout") for r in records)


def test_rloo_probes_its_step_0_rollouts(tokenizer, tmp_path):
    trainer = rl_trainer(tokenizer, tmp_path, PROMPT_ONLY, [LearningDynamicsCallback(every=2)], kind="rloo")
    trainer.train()
    run = RunDir(tmp_path / "ldyn")
    records = run.read("probes.jsonl")
    assert sorted({r["step"] for r in records}) == [0, 2, 3] and {r["stage"] for r in records} == {"rloo"}
    assert {"chosen", "argmax"} <= {r["type"] for r in records}
    assert json.loads((run.path / "data.json").read_text())["probe_source"] == "the trainer's step-0 rollouts"


def test_a_resumed_grpo_run_probes_the_same_step_0_rollouts(tokenizer, tmp_path):
    """Resumed at step 2 there are no step-0 rollouts to sample: the run's data.json kept them."""
    saving = dict(save_strategy="steps", save_steps=2)
    rl_trainer(tokenizer, tmp_path, PROMPT_ONLY, [LearningDynamicsCallback(every=1)], **saving).train()
    run = RunDir(tmp_path / "ldyn")
    full = {(r["step"], r["example_id"], r["type"]): r["logp_sum"] for r in run.read("probes.jsonl")}
    resumed = rl_trainer(tokenizer, tmp_path, PROMPT_ONLY, [LearningDynamicsCallback(every=1)], **saving)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    again = {(r["step"], r["example_id"], r["type"]): r["logp_sum"] for r in run.read("probes.jsonl")}
    assert again == full and {k[0] for k in full} == {0, 1, 2, 3}


def fake_trainer(prompts, completions, rewards, weights=(1.0,)):
    logs = {"prompt": prompts, "completion": completions, "rewards": {f"r{i}": r for i, r in enumerate(rewards)}}
    names = list(logs["rewards"])
    return SimpleNamespace(
        _logs=logs, reward_func_names=names, reward_weights=weights, state=SimpleNamespace(global_step=0)
    )


def test_rollout_rows_weigh_rewards_and_leave_out_empty_and_unscored_samples(tmp_path):
    prompts = ["Q1?"] * 4 + ["Q2?"] * 4
    completions = [" a", "", " b", " c", " d", " e", " f", " g"]
    first = [0.2, 9.0, 0.6, float("nan"), 0.1, 0.3, None, 0.0]
    second = [1.0, 9.0, 1.0, float("nan"), 0.0, 0.0, None, 0.0]
    trainer = fake_trainer(prompts, completions, [first, second], weights=(1.0, 0.5))
    rows, report = rollout_rows(trainer, 16, 0, tmp_path)
    q1, q2 = rows
    # Q1: " a" 0.7, "" (empty) and " c" (unscored) left out, " b" 1.1: the best, and the one correct
    assert q1["chosen"] == " b" and q1["rollout_correct"] == " b" and q1["rollout_incorrect"] == " a"
    # Q2: none reaches 1, so no rollout_correct (None: `load_probe_set` leaves it out of this prompt)
    assert q2["chosen"] == " e" and q2["rollout_correct"] is None and q2["rollout_incorrect"] == " d"
    assert report["probe_source"] == "the trainer's step-0 rollouts" and len(report["rollouts"]) == 2
    assert len(rollout_rows(trainer, 1, 0, tmp_path)[0]) == 1  # n prompts at most
    with pytest.raises(LdynError, match="all empty or unscored"):
        rollout_rows(fake_trainer(["Q?"] * 2, ["", " x"], [[1.0, float("nan")]]), 16, 0, tmp_path)


def test_a_prompt_only_dataset_without_rollouts_is_one_clear_error():
    with pytest.raises(LdynError, match=r"pass probes explicitly, e\.g\. LearningDynamicsCallback\('probes\.jsonl'\)"):
        probe_rows(PROMPT_ONLY, None, 4, 0, seed=0)
