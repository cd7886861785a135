"""LoRA adapters in ldyn's trainer: the adapter's tangent kernel, the reference with the adapter off, checkpoints
that hold adapters, and resuming mid-stage."""

import json

import pytest
import torch
from helpers import OBSERVED, UPDATE, cut_and_resume_equals_uninterrupted, ldyn, reference_logps, tiny_run_args

from ldyn.config import LossConfig, ModelConfig
from ldyn.data.tokenize import IGNORE, collate, collate_pairs
from ldyn.dynamics.akg import logit_jvp, loss_logit_gradient, parameters, update_directions
from ldyn.dynamics.entk import entk, predicted_logit_change
from ldyn.losses import get_loss
from ldyn.models.load import load_model
from ldyn.models.pretrained import prepare, tiny_model
from ldyn.runs.directory import RunDir

LORA = ["model.peft.r=4", "model.peft.alpha=8"]


@pytest.fixture
def lora64(tokenizer):
    """A float64 tiny Llama with a random (not zero-initialised) LoRA adapter on every linear layer."""
    from peft import LoraConfig, get_peft_model

    model, _ = prepare(tiny_model(tokenizer, torch.float64, "sdpa", seed=2, hidden_size=16), tokenizer)
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config).to(torch.float64).eval()


def test_decomposition_runs_over_the_adapter_and_equals_its_explicit_kernel(lora64):
    theta = parameters(lora64)
    assert theta and all("lora_" in name for name in theta)  # K is the adapter's tangent kernel
    spec, cfg, eta = get_loss("dpo"), LossConfig(beta=0.5), 1e-3
    reference = reference_logps(lora64, UPDATE)
    dirs = update_directions(lora64, spec, cfg, UPDATE, 0, reference)
    tangent = {k: -eta * (dirs.positive[k] + dirs.negative[k]) for k in dirs.positive}
    observed = collate(OBSERVED, 0)
    _, _, dz = logit_jvp(lora64, theta, tangent, observed)  # the scored tokens, sequence by sequence
    upd = collate_pairs(UPDATE, 0, True)  # the slow twin: explicit Jacobians over the adapter's parameters
    [(_, labels_u, grad)] = loss_logit_gradient(lora64, spec, cfg, [upd], len(UPDATE), reference)
    kernel = entk(lora64, theta, observed, upd)
    dz_explicit = predicted_logit_change(kernel, grad[labels_u != IGNORE].detach(), eta)
    assert torch.allclose(dz, dz_explicit, atol=1e-8, rtol=0)
    assert dz_explicit.abs().max() > 1e-4  # a non-trivial change


def test_lora_run_trains_adapters_with_the_adapter_off_as_reference(tmp_path, capsys):
    code, _, err = ldyn(capsys, *tiny_run_args(tmp_path / "run", *LORA, "decompose.every=2", "decompose.n=1"))
    assert code == 0, err
    run = RunDir(tmp_path / "run")
    metrics = run.read("metrics.jsonl")
    first_dpo = next(m for m in metrics if m["stage"] == "dpo")
    assert first_dpo["loss"] == pytest.approx(0.693147, abs=1e-5)  # a fresh adapter: policy == reference
    for stage in ("sft", "dpo"):
        folder = run.path / "checkpoints" / stage
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    chain = json.loads((run.path / "checkpoints" / "dpo" / "ldyn_adapter_chain.json").read_text())
    assert chain == {"base": "tiny", "seed": 0, "merged": ["../sft"]}
    assert {r["stage"] for r in run.read("decomposition.jsonl")} >= {"sft", "dpo"}
    # the checkpoint loads as the trained model: its log-probs are the last probe round's
    model, tokenizer = load_model(ModelConfig(str(run.path / "checkpoints" / "dpo"), attn_implementation="eager"))
    last = max(p["step"] for p in run.read("probes.jsonl"))
    rows = {(p["example_id"], p["type"]): p["logp_sum"] for p in run.read("probes.jsonl") if p["step"] == last}
    from ldyn.dynamics.probing import load_probe_items
    from ldyn.logprobs.padded import sequence_logps
    from ldyn.runs.directory import load_run

    cfg = load_run(run.path).config
    items, _ = load_probe_items(cfg.probe.path, cfg.probe.types, cfg.probe.n, cfg.seed, tokenizer, cfg.data)
    item = next(it for it in items if it.type == "chosen")
    with torch.no_grad():
        logp = sequence_logps(model, collate([(item.prompt, item.response)], tokenizer.pad_token_id)).sum.item()
    assert logp == pytest.approx(rows[(item.example_id, "chosen")], abs=1e-4)


def test_lora_run_resumes_mid_stage_to_the_same_result(tmp_path, capsys, monkeypatch):
    cut_and_resume_equals_uninterrupted(tmp_path, capsys, monkeypatch, ["checkpoint_every=1", *LORA])


def test_bad_lora_settings_are_one_line(tmp_path, capsys):
    code, _, err = ldyn(capsys, *tiny_run_args(tmp_path / "run", "model.peft.r=4", "model.peft.dropout=0.1"))
    assert code == 2 and "model.peft.dropout" in err and err.count("\n") == 1
    code, _, err = ldyn(capsys, *tiny_run_args(tmp_path / "run", "model.peft.r=4", "model.peft.target_modules=qq"))
    assert code == 2 and "model.peft.target_modules" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_compare_puts_lora_and_full_runs_side_by_side(tmp_path, capsys):
    assert ldyn(capsys, *tiny_run_args(tmp_path / "full"))[0] == 0
    assert ldyn(capsys, *tiny_run_args(tmp_path / "lora", *LORA))[0] == 0
    png = str(tmp_path / "cmp.png")
    code, out, err = ldyn(capsys, "compare", str(tmp_path / "full"), str(tmp_path / "lora"), "--out", png)
    assert code == 0, err
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    import csv

    rows = list(csv.DictReader(open(tmp_path / "cmp.csv")))
    assert {(r["run"], r["panel"]) for r in rows} == {
        (run, panel) for run in ("full", "lora") for panel in ("chosen", "rejected", "others", "argmax")
    }
    full = {(r["panel"], int(r["step"])): float(r["mean_change"]) for r in rows if r["run"] == "full"}
    assert full[("chosen", 0)] == 0.0 and full[("chosen", 5)] != 0.0


def test_an_adapter_trains_the_same_through_the_fixed_shape_update(lora64):
    """`cuda_graphs`' fixed-shape update (run eagerly on a CPU) over a PEFT model: the adapter's parameters only,
    the same losses and the same adapter as the trainer's packed path, in float64."""
    import copy

    from accelerate import Accelerator

    from ldyn.config import OptimConfig
    from ldyn.models.pretrained import frozen_copy
    from ldyn.train.trainer import Trainer

    runs = []
    for graphs in (0, 8):
        model = copy.deepcopy(lora64)
        trainer = Trainer(
            model,
            get_loss("dpo"),
            LossConfig(beta=0.5),
            OptimConfig(name="adamw", lr=1e-2),
            accelerator=Accelerator(cpu=True),
            pad_id=0,
            ref_model=frozen_copy(model),
            cuda_graphs=graphs,
        )
        losses = [trainer.update([UPDATE], t)["loss"] for t in range(3)]
        runs.append((losses, {k: v.clone() for k, v in parameters(model).items()}))
        if graphs:  # the recorder keeps a gradient for the adapter's parameters only
            assert len(trainer.graphed.grads) == len(parameters(model)) and all("lora_" in n for n in parameters(model))
    assert runs[1][0] == pytest.approx(runs[0][0], rel=0, abs=1e-10)
    for name, value in runs[0][1].items():
        assert torch.allclose(runs[1][1][name], value, rtol=1e-8, atol=1e-10), name
