"""The real embedded SmolLM2-135M-Instruct, for a few steps (minutes on CPU). Run with `pytest -m slow`."""

import shutil

import pytest
import torch

from ldyn import cli
from ldyn.config import ModelConfig
from ldyn.data.probesets import load_probe_set
from ldyn.data.tokenize import tokenize_rows
from ldyn.dynamics.probing import probe, probe_items
from ldyn.models.load import load_model
from ldyn.runs.directory import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model(ModelConfig(name="smollm2"))


def test_embedded_model_is_smollm2_with_its_tokenizer(smollm2):
    model, tokenizer = smollm2
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and model.get_input_embeddings().padding_idx is None


def test_shared_prompt_probing_matches_plain_on_smollm2(smollm2):
    model, tokenizer = smollm2
    examples, _ = load_probe_set("embedded", ["auto"], n=2)
    rows = tokenize_rows(tokenizer, [(e.id, e.prompt, e.responses) for e in examples], 256, 128)
    items = probe_items(rows)
    fast = {(r["example_id"], r["type"]): r for r in probe(model, items, tokenizer.pad_token_id, progress=False)}
    plain = {
        (r["example_id"], r["type"]): r
        for r in probe(model, items, tokenizer.pad_token_id, share_prompt=False, progress=False)
    }
    assert fast.keys() == plain.keys()
    for key in fast:
        assert abs(fast[key]["logp_mean"] - plain[key]["logp_mean"]) <= 1e-4, key  # fp32, per token
        assert abs(fast[key]["logp_sum"] - plain[key]["logp_sum"]) <= 1e-3 * max(1, fast[key]["n_tokens"] / 10), key


def test_a_few_real_steps_of_sft_then_dpo(tmp_path):
    out = tmp_path / "run"
    code = cli.main(
        [
            "run",
            "smollm2_sft_dpo",
            f"output_dir={out}",
            "stages.sft.steps=2",
            "stages.dpo.steps=2",
            "probe.n=2",
            "probe.every=2",
            "data.n_train=8",
        ]
    )
    assert code == 0
    run = RunDir(out)
    metrics = run.read("metrics.jsonl")
    assert [m["stage"] for m in metrics] == ["sft", "sft", "dpo", "dpo"]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert metrics[2]["loss"] == pytest.approx(0.6931, abs=1e-3)  # DPO starts at log 2: policy = reference
    probes = run.read("probes.jsonl")
    chosen = {p["step"]: p["logp_sum"] for p in probes if p["type"] == "chosen" and p["example_id"] == "hh-001"}
    assert sorted(chosen) == [0, 2, 4] and chosen[2] != chosen[0]


def test_two_grpo_updates_on_smollm2_probe_its_rollouts_and_decompose(tmp_path):
    """The shipped GRPO recipe, cut to 2 updates of 2 prompts: SmolLM2 answers some of its step-0 samples right
    and some wrong (both rollout types probed), the update is decomposed by advantage sign, rl.png is drawn."""
    out = tmp_path / "run"
    args = ["stages.grpo.steps=2", "stages.grpo.batch_size=2", "probe.n=4", "probe.every=2", "decompose.n=2"]
    assert cli.main(["run", "grpo_arith", f"output_dir={out}", "decompose.every=1", *args]) == 0
    run = RunDir(out)
    types = {p["type"] for p in run.read("probes.jsonl")}
    assert {"rollout_correct", "rollout_incorrect", "held_out_sample", "irr_train", "argmax"} <= types
    rows = run.read("decomposition.jsonl")
    assert {r["step"] for r in rows} == {1, 2} and all("sgd_negative" in r for r in rows)
    assert (out / "figures" / "rl.png").is_file()


def test_lora_sft_then_dpo_on_smollm2_in_its_chat_template(tmp_path):
    out = tmp_path / "run"
    args = [
        "run",
        "smollm2_sft_dpo",
        f"output_dir={out}",
        "stages.sft.steps=2",
        "stages.dpo.steps=2",
        "probe.n=2",
        "probe.every=2",
        "data.n_train=8",
        "data.template=chat",
        "model.peft.r=8",
        "stages.*.optim.lr=1e-4",
        "decompose.every=3",
        "decompose.n=1",
    ]
    assert cli.main(args) == 0
    run = RunDir(out)
    metrics = run.read("metrics.jsonl")
    assert metrics[2]["loss"] == pytest.approx(0.6931, abs=1e-4)  # the reference is the SFT model, adapter off
    assert (out / "checkpoints" / "dpo" / "adapter_model.safetensors").is_file()
    decomposition = run.read("decomposition.jsonl")
    assert decomposition and all(torch.isfinite(torch.tensor(r["predicted"])) for r in decomposition)
    # the adapter checkpoint (SFT adapter merged, then the DPO one) is the trained model
    model, tokenizer = load_model(ModelConfig(str(out / "checkpoints" / "dpo")))
    probes = [p for p in run.read("probes.jsonl") if p["step"] == 4 and p["type"] == "chosen"]
    from ldyn.dynamics.probing import load_probe_items
    from ldyn.runs.directory import load_run

    cfg = load_run(out).config
    items, _ = load_probe_items(cfg.probe.path, ["chosen"], 2, cfg.seed, tokenizer, cfg.data)
    assert tokenizer.decode(items[0].prompt).endswith("<|im_start|>assistant\n")  # SmolLM2's chat format
    again = {
        r["example_id"]: r["logp_sum"]
        for r in probe(model, items, tokenizer.pad_token_id, progress=False)
        if r["type"] == "chosen"
    }
    assert len(probes) == 2
    for p in probes:
        assert again[p["example_id"]] == pytest.approx(p["logp_sum"], abs=1e-3)


def test_smollm2_samples_readable_answers_and_judges_them(smollm2, tmp_path):
    """On-policy samples from the real model are text in the chat format's language, and the local judge, shown
    the same pair in both orders, names the same response when one is plainly unhelpful."""
    from ldyn.generate.judges import LocalJudge
    from ldyn.train.sampling import generate

    model, tokenizer = smollm2
    torch.manual_seed(0)
    prompt = "\n\nHuman: What is the capital of France?\n\nAssistant:"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    out = generate(model, [ids, ids], tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens=24)
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in out]
    assert all(sum(c.isalpha() for c in t) > 5 for t in texts)
    judge = LocalJudge(model, tokenizer, "smollm2")
    good, bad = " The capital of France is Paris.", " banana banana banana"
    verdicts = judge.prefer(prompt, good, bad), judge.prefer(prompt, bad, good)
    assert set(verdicts) <= {"A", "B"}  # it always answers; whether it is consistent is what the win rate measures


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor generates C++ for a CPU: no g++ here")
def test_an_inductor_compiled_training_forward_gives_the_eager_loss_and_gradients(tokenizer):
    """Generated kernels (inductor on this CPU) against the eager model, float64: fused operators reorder sums."""
    from helpers import compiled_against_eager

    (eager_loss, eager), (loss_value, grads) = compiled_against_eager(tokenizer, "sft")
    assert torch.allclose(eager_loss, loss_value, rtol=1e-10)
    for a, b in zip(eager, grads):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)
