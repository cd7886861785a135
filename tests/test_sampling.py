"""On-policy sampling: samples end at EOS, replace y⁻ (or both responses) before the update, come from the policy
at θ_t (or from the reference for SPIN), and are written to samples.jsonl."""

import pytest
import torch

from ldyn import cli
from ldyn.config import SampleConfig
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model
from ldyn.runs.directory import RunDir
from ldyn.train.sampling import ResponseSampler, generate, overlap_reward, unigram_f1
from ldyn.train.trainer import TrainExample


@pytest.fixture
def tiny(tokenizer):
    model, _ = prepare(tiny_model(tokenizer, torch.float32, "sdpa", seed=0), tokenizer)
    return model


def test_generate_stops_at_eos_and_handles_prompts_of_different_lengths(tiny, tokenizer):
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    out = generate(tiny, [[5, 6, 7], [8]], tokenizer.pad_token_id, eos, max_new_tokens=12)
    assert len(out) == 2
    for r in out:
        assert 1 <= len(r) <= 12 and (eos not in r or r.index(eos) == len(r) - 1)
    greedy = generate(tiny, [[5, 6, 7], [8]], tokenizer.pad_token_id, eos, max_new_tokens=6, do_sample=False)
    alone = generate(tiny, [[8]], tokenizer.pad_token_id, eos, max_new_tokens=6, do_sample=False)
    assert greedy[1] == alone[0]  # left padding does not change the continuation


def test_overlap_reward_prefers_the_sample_closer_to_chosen():
    e = TrainExample("0", [1], chosen=[10, 11, 12, 2], rejected=[20, 21, 2])
    assert unigram_f1([10, 11], [10, 11]) == 1.0 and unigram_f1([1], [2]) == 0.0
    assert overlap_reward([10, 11, 2], e) > overlap_reward([20, 21, 2], e)


def _examples():
    return [TrainExample(str(i), [5 + i, 6], [40, 41, 2], [50, 2]) for i in range(3)]


def test_rejected_are_replaced_by_samples_of_the_given_model(tiny, tokenizer, tmp_path):
    other = frozen_copy(tiny)
    calls = []
    for source in ("policy", "reference"):
        sampler = ResponseSampler(
            SampleConfig(responses="rejected", source=source, max_new_tokens=5),
            tiny,
            other,
            pad_id=tokenizer.pad_token_id,
            eos_id=tokenizer.eos_token_id,
            run=RunDir(tmp_path),
            tokenizer=tokenizer,
        )
        calls.append(sampler.model)
        out = sampler(_examples(), step=7)
        assert [e.chosen for e in out] == [[40, 41, 2]] * 3  # y⁺ stays the data's
        assert all(e.rejected != [50, 2] for e in out) and [e.id for e in out] == ["0@7", "1@7", "2@7"]
    assert calls == [tiny, other]
    rows = RunDir(tmp_path).read("samples.jsonl")
    assert len(rows) == 6 and {r["role"] for r in rows} == {"rejected"} and rows[0]["step"] == 7


def test_both_sampled_are_ordered_by_the_reward(tiny, tokenizer):
    sampler = ResponseSampler(
        SampleConfig(responses="both", max_new_tokens=5),
        tiny,
        None,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    for e in sampler(_examples(), step=1):
        source = next(x for x in _examples() if x.id == e.id.split("@")[0])
        assert overlap_reward(e.chosen, source) >= overlap_reward(e.rejected, source)


def test_on_policy_run_trains_on_samples_and_logs_them(tmp_path, probe_file):
    out = tmp_path / "run"
    args = [
        "run",
        "paper_dpo_onpolicy",
        f"data.train={probe_file}",
        f"probe.path={probe_file}",
        "model.name=tiny",
        "data.n_train=0",
        "probe.n=2",
        "stages.dpo.steps=2",
        "stages.dpo.sample.max_new_tokens=6",
        f"output_dir={out}",
    ]
    assert cli.main(args) == 0
    run = RunDir(out)
    samples, metrics = run.read("samples.jsonl"), run.read("metrics.jsonl")
    assert [r["step"] for r in samples] == [1, 1, 2, 2]  # the update each sample fed
    assert all(e.endswith(f"@{m['step']}") for m in metrics for e in m["examples"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.dpo.loss.name=sft", "sampled responses feed a preference loss"),
        ("stages.dpo.loss.name=slic", "'slic' has no reference model to sample from"),
        ("stages.dpo.sample.rank=bleu", "unknown reward 'bleu'"),
    ],
)
def test_sampling_config_errors_fail_before_loading(override, message, tmp_path, probe_file, capsys):
    extra = ["stages.dpo.sample.source=reference"] if "slic" in override else []
    extra += ["stages.dpo.sample.responses=both"] if "rank" in override else []
    args = [
        "run",
        "paper_dpo_onpolicy",
        f"data.train={probe_file}",
        f"probe.path={probe_file}",
        "model.name=tiny",
        override,
        *extra,
        f"output_dir={tmp_path / 'x'}",
    ]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_both_sampled_can_be_ranked_by_a_judge(tiny, tokenizer):
    class PrefersLonger:
        id = "fake:longer"
        seen = []

        def prefer(self, prompt, a, b):
            self.seen.append(prompt)
            return "A" if len(a) >= len(b) else "B"

    judge = PrefersLonger()
    sampler = ResponseSampler(
        SampleConfig(responses="both", rank="judge", max_new_tokens=8),
        tiny,
        None,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        tokenizer=tokenizer,
        judge=judge,
    )
    out = sampler(_examples(), step=1)
    decode = tokenizer.decode
    assert all(
        len(decode(e.chosen, skip_special_tokens=True)) >= len(decode(e.rejected, skip_special_tokens=True))
        for e in out
    )
    assert len(judge.seen) == 3
