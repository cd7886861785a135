"""A GRPO stage (train/grpo.py): the run's files, the update's gradient by hand, the KL term, a user's reward, the
refusals, and the arithmetic task as a data source."""

import csv
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from helpers import OBSERVED, ldyn, write_jsonl

from ldyn.config import LossConfig, OptimConfig, RLConfig
from ldyn.data.tokenize import IGNORE, collate
from ldyn.dynamics.akg import UpdateDirections, logit_jvp, parameters
from ldyn.dynamics.entk import entk, predicted_logit_change
from ldyn.logprobs.padded import response_logits, sequence_logps
from ldyn.losses import get_loss
from ldyn.rl.tasks import arithmetic_rows
from ldyn.runs.directory import RunDir
from ldyn.train.grpo import GRPO, Completion, Rollout
from ldyn.train.task_data import is_task, task_rows
from ldyn.train.trainer import Trainer, TrainExample

G = 4
SMALL = [
    "model.name=tiny",
    "stages.grpo.steps=2",
    "stages.grpo.batch_size=2",
    f"stages.grpo.rl.num_generations={G}",
    "stages.grpo.rl.max_completion_length=6",
    "probe.n=2",
    "probe.every=1",
    "data.train=arithmetic:n=8",
    "probe.path=arithmetic:n=8",
]


def grpo_run(tmp_path, capsys, *extra):
    code, _, err = ldyn(capsys, "run", "grpo_arith", *SMALL, f"output_dir={tmp_path / 'run'}", *extra)
    assert code == 0, err
    return RunDir(tmp_path / "run")


def test_a_grpo_run_writes_reward_metrics_samples_and_probes(tmp_path, capsys):
    run = grpo_run(tmp_path, capsys)
    metrics = run.read("metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("loss", "reward", "reward_std", "pass_rate", "frac_reward_zero_std", "advantage_std",
                    "clip_ratio", "completion_length", "entropy", "time/rollout_s", "grad_norm"):  # fmt: skip
            assert key in m, key
        assert m["clip_ratio"] == 0.0 and "kl" not in m  # ρ = 1; β = 0: no reference
        assert 1 <= m["completion_length"] <= 6 and len(m["examples"]) == 2 * G
    samples = run.read("samples.jsonl")
    assert len(samples) == 2 * 2 * G and {s["step"] for s in samples} == {1, 2}
    groups = {}
    for s in samples:
        assert {"example_id", "index", "text", "reward", "advantage"} <= set(s)
        groups.setdefault((s["step"], s["example_id"]), []).append(s)
    assert len(groups) == 4 and all(len(g) == G for g in groups.values())
    for group in groups.values():  # z-scored within the group: mean 0
        assert abs(sum(s["advantage"] for s in group)) < 1e-6
    by_step = {m["step"]: m for m in metrics}
    for step in (1, 2):
        rewards = [s["reward"] for s in samples if s["step"] == step]
        assert by_step[step]["reward"] == pytest.approx(sum(rewards) / len(rewards))
    probes = run.read("probes.jsonl")
    assert {p["step"] for p in probes} == {0, 1, 2}
    assert {p["type"] for p in probes} >= {"chosen", "rejected", "chosen_gptsemantic", "rejected_far", "irr_train",
                                           "irr_hum", "held_out_sample"}  # fmt: skip
    trained = {p["example_id"] for p in probes if p["type"] != "held_out_sample"}
    assert trained == {"arith-0-0000", "arith-0-0001"}
    held = {p["example_id"] for p in probes if p["type"] == "held_out_sample"}  # 4 step-0 samples of 2 prompts
    assert held <= {f"held_out/arith-0-000{i}#{k}" for i in range(2) for k in range(4)} and len(held) >= 6
    report = json.loads((run.path / "data.json").read_text())  # the held-out samples told apart from the prompts
    assert (report["probe_prompts"], report["probe_held_out_samples"]) == (2, len(held))
    # pass@k of the stage's start and end, on its task and its held-out prompts
    code, out, err = ldyn(capsys, "pass-at-k", str(run.path), "--n", "2", "--k", "1", "2", "--prompts", "2")
    assert code == 0, err
    result = json.loads((run.path / "pass_at_k.json").read_text())
    assert result["stage"] == "grpo" and set(result) >= {"trained", "held_out", "seconds"}
    for table in (result[k][when] for k in ("trained", "held_out") for when in ("before", "after")):
        assert set(table) == {"pass@1", "pass@2", "mean_reward"} and 0 <= table["pass@1"] <= table["pass@2"] <= 1
    assert "trained: pass@1" in out
    code, _, err = ldyn(capsys, "pass-at-k", str(run.path), "--n", "2", "--k", "4")
    assert code == 2 and "field '--k'" in err


def test_a_user_reward_by_import_path_and_a_kl_term(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def has_digit(prompts, completions, answer, **fields):\n"
        "    return [float(any(c.isdigit() for c in text)) + 0.5 * (len(text) % 2) for text in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = grpo_run(tmp_path, capsys, "stages.grpo.rl.reward=my_rewards:has_digit", "stages.grpo.rl.beta=0.1")
    from my_rewards import has_digit

    for s in run.read("samples.jsonl"):
        assert s["reward"] == has_digit([], [s["text"]], [None])[0]
    metrics = run.read("metrics.jsonl")
    assert all("kl" in m for m in metrics)
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # the first update starts at the reference
    assert metrics[1]["kl"] > 0
    sys.modules.pop("my_rewards", None)


def test_rl_probes_and_the_decomposition_by_advantage_sign(tmp_path, capsys, monkeypatch):
    """The step-0 rollouts split by the stage's reward (here: odd length is right), kept in data.json and probed
    every round; the decomposition of each update into its positive- and negative-advantage rollouts' parts."""
    (tmp_path / "parity.py").write_text("def odd(prompts, completions, **fields):\n"
                                        "    return [float(len(c) % 2) for c in completions]\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    run = grpo_run(tmp_path, capsys, "stages.grpo.rl.reward=parity:odd", "decompose.every=1",
                   "stages.grpo.rl.max_completion_length=12")  # fmt: skip
    rollouts = json.loads((run.path / "data.json").read_text())["rollouts"]
    assert set(rollouts) == {"arith-0-0000", "arith-0-0001"}
    for picked in rollouts.values():
        assert len(picked.get("rollout_correct", "x")) % 2 == 1 and len(picked.get("rollout_incorrect", "")) % 2 == 0
    assert any(len(picked) == 2 for picked in rollouts.values())
    probes = run.read("probes.jsonl")
    for step in (0, 1, 2):
        got = {(p["example_id"], p["type"]) for p in probes if p["step"] == step}
        assert {(i, t) for i, picked in rollouts.items() for t in picked} <= got
    rows = run.read("decomposition.jsonl")
    assert {r["step"] for r in rows} == {1, 2}
    # rl.png and its numbers: the held-out KL is the mean drop of π₀'s own samples' log π
    assert (run.path / "figures" / "rl.png").is_file()
    with open(run.path / "figures" / "rl_summary.csv") as f:
        summary = {int(r["step"]): r for r in csv.DictReader(f)}
    held = {(p["step"], p["example_id"]): p["logp_sum"] for p in probes if p["type"] == "held_out_sample"}
    ids = {e for _, e in held}
    for step in (0, 2):
        kl = sum(held[(0, e)] - held[(step, e)] for e in ids) / len(ids)
        assert float(summary[step]["kl_held_out"]) == pytest.approx(kl, abs=1e-5)
    for key in ("sgd_positive", "sgd_negative", "predicted", "observed", "observed/lbk"):
        assert any(abs(r[key]) > 0 for r in rows), key


def grpo_trainer(model, cfg, **kw):
    """A trainer whose loss is a GRPO stage's, on fixed completions (no rollout: no tokenizer)."""
    accelerator, objective = Accelerator(cpu=True), GRPO(cfg, model, None, {})
    spec, loss_cfg = get_loss("grpo"), LossConfig(name="grpo")
    return Trainer(
        model, spec, loss_cfg, OptimConfig(lr=1e-3), accelerator=accelerator, pad_id=0, objective=objective, **kw
    )


def test_an_interrupted_grpo_run_resumes_to_the_same_samples_and_updates(tmp_path, capsys, monkeypatch):
    """Each rollout is seeded by its update: a run killed after update 3 and resumed from its checkpoint at 2 samples
    and trains what the uninterrupted run does."""
    args = ["stages.grpo.steps=4", "checkpoint_every=2", "stages.grpo.rl.beta=0.1", "probe.every=2"]
    full = grpo_run(tmp_path / "full", capsys, *args)
    from ldyn.train import experiment

    class Killed(experiment.MetricsLogger):
        def on_step_end(self, state):
            super().on_step_end(state)
            if state.step == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "MetricsLogger", Killed)
    code, _, err = ldyn(capsys, "run", "grpo_arith", *SMALL, f"output_dir={tmp_path / 'cut'}", *args)
    assert code == 130, err
    monkeypatch.undo()
    code, _, err = ldyn(capsys, "resume", str(tmp_path / "cut"))
    assert code == 0, err
    cut = RunDir(tmp_path / "cut")
    texts = lambda run: [(s["step"], s["example_id"], s["index"], s["text"]) for s in run.read("samples.jsonl")]
    assert texts(cut) == texts(full)
    losses = lambda run: [(m["step"], round(m["loss"], 6), round(m["kl"], 8)) for m in run.read("metrics.jsonl")]
    assert losses(cut) == losses(full)


def completions(n_prompts=2, g=3):
    out = []
    for p in range(n_prompts):
        for i in range(g):
            tokens = [10 + p, 20 + i, 30 + (i * p) % 5, 2][: 2 + (i + p) % 3]
            out.append(Completion(f"{p}#{i}", [5 + p, 6, 7], tokens, None, str(p), 0.0, [1.0, -0.5, -0.5][i] * (p + 1)))
    return out


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("packed", [True, False])
def test_the_update_is_the_advantage_weighted_policy_gradient(loss_type, packed, tiny64):
    """ρ = 1, β = 0: ∇L = ∇ -Σ_i c_i A_i log π(o_i), c_i the loss type's weight of completion i's tokens."""
    cfg = RLConfig(num_generations=3, loss_type=loss_type, max_completion_length=5)
    trainer = grpo_trainer(tiny64, cfg)
    trainer.packs_rows = packed
    examples = completions()
    tiny64.zero_grad()
    loss, metrics, logps = trainer.loss_on(examples)
    loss.backward()
    got = [p.grad.clone() for p in tiny64.parameters()]

    tiny64.zero_grad()
    logp = sequence_logps(tiny64, collate([(e.prompt, e.chosen) for e in examples], 0)).sum
    lengths = torch.tensor([len(e.chosen) for e in examples], dtype=torch.float64)
    advantages = torch.tensor([e.advantage for e in examples], dtype=torch.float64)
    n = len(examples)
    c = {
        "grpo": 1 / (n * lengths),
        "bnpo": 1 / lengths.sum().expand(n),
        "dapo": 1 / lengths.sum().expand(n),
        "dr_grpo": torch.full((n,), 1 / (n * cfg.max_completion_length), dtype=torch.float64),
    }[loss_type]
    (-(c * advantages * logp).sum()).backward()
    for a, b in zip(got, (p.grad for p in tiny64.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(logps.sum, logp.detach(), rtol=1e-9, atol=1e-12)
    # its value at ρ = 1 is -Σ_it w_it A_i (the ratio is 1), TRL's too
    assert metrics["loss"] == pytest.approx(float(-(c * lengths * advantages).sum()), abs=1e-12)
    assert metrics["completion_length"] == pytest.approx(float(lengths.mean()))


def test_dapo_normalises_over_the_whole_update_across_micro_batches(tiny64):
    """Two micro-batches of one update: their summed backward is the token mean over both (TRL's num_items)."""
    examples = completions(n_prompts=4)
    grads = []
    for micro, loss_type in ((2, "dapo"), (1, "bnpo")):
        cfg = RLConfig(num_generations=3, loss_type=loss_type)
        trainer = grpo_trainer(tiny64, cfg, grad_accum=micro)
        size = len(examples) // micro
        parts = [Rollout(examples[i * size : (i + 1) * size], 0.0) for i in range(micro)]
        for part in parts:
            part.num_items = sum(len(e.chosen) for e in examples)
        tiny64.zero_grad()
        for i, part in enumerate(parts):
            trainer.forward_backward(part, micro, i == micro - 1, None)
        grads.append([p.grad.clone() for p in tiny64.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_rollout_is_seeded_by_its_step(tiny64, tokenizer):
    rows = {r["id"]: r for r in arithmetic_rows(2)}
    grpo = GRPO(RLConfig(num_generations=3, max_completion_length=4), tiny64, tokenizer, rows, seed=5)
    batch = [TrainExample(i, tokenizer(r["chosen"]).input_ids + [1, 2], [], None) for i, r in rows.items()]
    first, again, later = grpo.sample(batch, 3), grpo.sample(batch, 3), grpo.sample(batch, 4)
    assert [c.chosen for c in first] == [c.chosen for c in again] != [c.chosen for c in later]
    assert [c.prompt_id for c in first] == [i for i in rows for _ in range(3)]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("stages.grpo.rl.num_generations=1", "stages.grpo.rl.num_generations"),
        ("stages.grpo.rl.loss_type=dapoo", "stages.grpo.rl.loss_type"),
        ("stages.grpo.rl.advantage=ppo", "stages.grpo.rl.advantage"),
        ("stages.grpo.rl.temperature=0", "stages.grpo.rl.temperature"),
        ("stages.grpo.rl.epsilon=-0.1", "stages.grpo.rl.epsilon"),
        ("stages.grpo.rl.top_k=-1", "stages.grpo.rl.top_k"),
        ("stages.grpo.rl.reward=final_numbr", "stages.grpo.rl.reward"),
        ("stages.grpo.rl.reward=no_such_module_x:f", "stages.grpo.rl.reward"),
        ("stages.grpo.extend=true", "stages.grpo.extend"),
        ("stages.grpo.sample.responses=rejected", "stages.grpo.sample.responses"),
        ("decompose.every=1 decompose.method=readout", "decompose.method"),
        ("decompose.every=1 stages.grpo.grad_accum=2", "stages.grpo.grad_accum"),
        ("decompose.every=1 mixed_precision=bf16", "mixed_precision"),
        ("data.train=arithmetic:digits=0", "data.train"),
        ("data.train=arithmetic:n=4,colour=red", "data.train"),
        ("probe.path=arithmetic:operators=/", "probe.path"),
    ],
)
def test_bad_settings_are_refused_naming_their_key(override, field, tmp_path, capsys):
    code, _, err = ldyn(capsys, "run", "grpo_arith", *SMALL, f"output_dir={tmp_path / 'run'}", *override.split())
    assert code == 2, err
    assert f"field '{field}'" in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_a_reward_needing_a_field_the_rows_lack_is_refused_before_the_run(tmp_path, capsys, pairs_file):
    code, _, err = ldyn(
        capsys, "run", "grpo_arith", *SMALL, f"output_dir={tmp_path / 'run'}", f"data.train={pairs_file}"
    )
    assert code == 2 and "field 'stages.grpo.rl.reward'" in err and "answer" in err
    assert not (tmp_path / "run").exists()


def test_the_arithmetic_source_takes_the_tasks_arguments(tmp_path, monkeypatch):
    rows = task_rows("arithmetic:n=5,digits=2,operators=+-,terms=3,seed=3,conversational=false", "data.train")
    assert rows == arithmetic_rows(5, 3, digits=2, operators=("+", "-"), terms=3, conversational=False)
    assert task_rows("arithmetic", "probe.path") == arithmetic_rows(64)
    monkeypatch.chdir(tmp_path)
    assert is_task("arithmetic:n=3")
    write_jsonl(tmp_path / "arithmetic", [{"prompt": "x", "chosen": "y", "rejected": "z"}])
    assert not is_task("arithmetic") and not is_task("embedded")


def test_ls_losses_shows_grpo(capsys):
    lines = dict(line.split(maxsplit=1) for line in ldyn(capsys, "ls", "losses")[1].splitlines())
    assert lines["grpo"].startswith("GRPO family") and lines["grpo"].endswith(
        "(needs prompts, a reward; params: stages.<i>.rl)"
    )


@pytest.mark.parametrize("packed", [True, False])
def test_an_rl_update_splits_by_advantage_sign_and_each_part_equals_its_explicit_kernel(packed, tiny64):
    """The decomposition of a GRPO update (ρ = 1, dapo): G from the step's own graph by autograd, its y⁺ part the
    positive-advantage completions'. Each part's first-order change of observed logits along −η g± equals the
    explicit −η K(x_o, u±) G± of a padded twin whose loss is written by hand, −Σ_it A_i log π_it / tokens."""
    cfg, eta = RLConfig(num_generations=3, loss_type="dapo", max_completion_length=5), 1e-3
    trainer = grpo_trainer(tiny64, cfg)
    trainer.packs_rows = packed
    examples = completions()
    positive = torch.tensor([e.advantage > 0 for e in examples])
    assert 0 < positive.sum() < len(examples)
    tiny64.zero_grad()
    loss, _, logps = trainer.loss_on(examples)
    directions = UpdateDirections.from_step(tiny64, loss, logps, len(examples), positive)
    loss.backward()
    directions.from_gradient({k: p.grad for k, p in tiny64.named_parameters()})

    update = collate([(e.prompt, e.chosen) for e in examples], 0)
    logits, labels = response_logits(tiny64, update)
    scored = labels != IGNORE
    token = -F.cross_entropy(logits[scored], labels[scored], reduction="none")
    advantages = torch.tensor([e.advantage for e in examples], dtype=torch.float64)
    hand = -(advantages[scored.nonzero()[:, 0]] * token).sum() / scored.sum()
    (grad,) = torch.autograd.grad(hand, logits)
    theta, observed = parameters(tiny64), collate(OBSERVED, 0)
    kernel = entk(tiny64, theta, observed, update)
    for part, rows in (("positive", positive), ("negative", ~positive)):
        g = getattr(directions, part)
        _, _, dz = logit_jvp(tiny64, theta, {k: -eta * v for k, v in g.items()}, observed)
        explicit = predicted_logit_change(kernel, (grad * rows[:, None, None])[scored], eta)
        assert explicit.abs().max() > 1e-9, part
        torch.testing.assert_close(dz, explicit, rtol=0, atol=1e-10)
