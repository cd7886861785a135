"""Helpers shared by the test modules (fixtures are in conftest.py): no test module imports another."""

import json
import threading
from http.server import BaseHTTPRequestHandler

import torch
import yaml
from accelerate import Accelerator

from ldyn import cli
from ldyn.config import LossConfig, OptimConfig
from ldyn.data.tokenize import collate_pairs
from ldyn.logprobs.padded import sequence_logps
from ldyn.losses import PairLogps, get_loss
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model
from ldyn.runs.directory import RunDir, load_run
from ldyn.train.trainer import Trainer, TrainExample


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the ldyn command on a tiny model


def tiny_run_args(out, *extra):
    return [
        "run",
        "smollm2_sft_dpo",
        "model.name=tiny",
        f"output_dir={out}",
        "stages.sft.steps=2",
        "stages.dpo.steps=3",
        "stages.sft.batch_size=2",
        "stages.dpo.batch_size=2",
        "probe.n=3",
        "probe.every=2",
        "data.n_train=6",
        *extra,
    ]


def tiny(out, *extra):
    """The smallest default run: the tiny model, two updates a stage, two prompts probed."""
    common = [
        "model.name=tiny",
        "stages.sft.steps=2",
        "stages.dpo.steps=2",
        "stages.*.batch_size=2",
        "probe.n=2",
        "probe.every=2",
        "data.n_train=4",
    ]
    return ["run", "smollm2_sft_dpo", *common, f"output_dir={out}", *extra]


def ldyn(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cut_and_resume_equals_uninterrupted(tmp_path, capsys, monkeypatch, args) -> None:
    """A run interrupted after update 4 (mid-DPO), then resumed, records what the uninterrupted run records."""
    assert ldyn(capsys, *tiny_run_args(tmp_path / "full", *args))[0] == 0
    from ldyn.train import experiment

    class Killed(experiment.MetricsLogger):
        def on_step_end(self, state):
            super().on_step_end(state)
            if state.step == 4:
                raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "MetricsLogger", Killed)
    code, _, err = ldyn(capsys, *tiny_run_args(tmp_path / "cut", *args))
    assert code == 130 and "ldyn resume" in err
    assert [m["step"] for m in RunDir(tmp_path / "cut").read("metrics.jsonl")] == [1, 2, 3, 4]
    monkeypatch.undo()
    code, _, err = ldyn(capsys, "resume", str(tmp_path / "cut"))
    assert code == 0, err
    full, cut = RunDir(tmp_path / "full"), RunDir(tmp_path / "cut")
    losses = lambda run: [(m["step"], round(m["loss"], 5)) for m in run.read("metrics.jsonl")]
    assert losses(cut) == losses(full)
    probes = lambda run: sorted(
        (p["step"], p["example_id"], p["type"], round(p["logp_sum"], 4)) for p in run.read("probes.jsonl")
    )
    assert probes(cut) == probes(full)


# ---------------------------------------------------------------- updates and observed rows for the instruments

EXAMPLES = [TrainExample(str(i), [1 + i, 2, 3], [4, 5 + i, 6], [7, 8 + i]) for i in range(8)]
UPDATE = [TrainExample("u0", [5, 6, 7], [8, 9, 10], [11, 12]), TrainExample("u1", [1, 2], [3, 4], [5, 6, 7])]
OBSERVED = [([5, 6, 7], [8, 9, 10]), ([5, 6, 7], [11, 12]), ([40, 41], [42, 43, 44])]


def reference_logps(model, examples):
    """Log-probs of a slightly different model, so that the DPO sigmoid is not at 1/2."""
    batch = collate_pairs(examples, 0, True)
    with torch.no_grad():
        logps = sequence_logps(model, batch).sum + torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    n = len(examples)
    return PairLogps(logps[:n], logps[n:], None, None)


def compiled_against_eager(tokenizer, loss, packed=False):
    """(eager, compiled) (loss, gradients) of one micro-batch on the plain path (or packed, as a CPU runs it), in
    float64 (sdpa: eager attention takes its softmax in float32, which generated kernels round differently)."""
    model, _ = prepare(tiny_model(tokenizer, dtype=torch.float64, attn_implementation="sdpa", seed=7), tokenizer)
    names = list(model.state_dict())
    out = []
    for mode in ("no", "default"):
        spec = get_loss(loss)
        trainer = Trainer(
            model,
            spec,
            LossConfig(name=loss),
            OptimConfig(lr=1e-3),
            accelerator=Accelerator(cpu=True),
            pad_id=0,
            ref_model=frozen_copy(model) if spec.needs_reference else None,
            compile=mode,
        )
        trainer.packs_rows = packed  # else the padded path, as under DDP or on a GPU
        model.zero_grad()
        value, *_ = trainer.loss_on(EXAMPLES[:3])
        value.backward()
        out.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    compiled = torch._dynamo.eval_frame.OptimizedModule
    compiled_modules = [m for m in trainer.forward_model.modules() if isinstance(m, compiled)]  # the last trainer's
    assert len(compiled_modules) == model.config.num_hidden_layers  # each decoder layer, not the whole model
    assert not any(isinstance(m, compiled) for m in model.modules())
    assert list(model.state_dict()) == names  # the instruments and checkpoints see the eager model, unchanged
    return out


# ---------------------------------------------------------------- synthetic run directories for the claims

OTHERS = ["chosen_gptsemantic", "irr_train", "irr_test", "irr_hum", "random_permute", "random_nonhum"]


def make_run(path, stages, curves, steps_per_stage=4, every=2, a_norm=None, decomposition=()):
    """A run directory with `stages` (name, config) and probe curves: type -> f(step, prompt) -> logp."""
    path.mkdir(parents=True)
    config = {
        "name": path.name,
        "model": {"name": "tiny"},
        "stages": [{"name": n, "steps": steps_per_stage, "batch_size": 2, **c} for n, c in stages],
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    total = steps_per_stage * len(stages)
    metrics = [{"step": s, "stage": stages[(s - 1) // steps_per_stage][0], "loss": 1.0} for s in range(1, total + 1)]
    a_norm = a_norm or (lambda s, e: 100 + s)
    probes = []
    for step in range(0, total + 1, every):
        stage = stages[max(step - 1, 0) // steps_per_stage][0]
        for e in range(4):
            for t, f in curves.items():
                row = {"step": step, "stage": stage, "example_id": str(e), "type": t, "logp_sum": f(step, e)}
                probes.append(row | {"a_norm": a_norm(step, e)})
    write_jsonl(path / "metrics.jsonl", metrics)
    write_jsonl(path / "probes.jsonl", probes)
    if decomposition:
        write_jsonl(path / "decomposition.jsonl", decomposition)
    return load_run(path)


SFT = ("sft", {"loss": {"name": "sft"}, "optim": {"lr": 1e-5}})
DPO = ("dpo", {"loss": {"name": "dpo"}, "optim": {"lr": 1e-5}})


def paper_sft():
    """SFT as the paper describes it: chosen and irr_train up, rejected up then flat, the rest down."""
    return {
        "chosen": lambda s, e: -100 + 3 * s,
        "rejected": lambda s, e: -90 + 2 * min(s, 2),
        "irr_train": lambda s, e: -120 + s,
        "irr_test": lambda s, e: -120 + 0.2 * s,
        "irr_hum": lambda s, e: -110 - s,
        "random_permute": lambda s, e: -300 - s,
        "random_nonhum": lambda s, e: -280 - s,
        "chosen_gptsemantic": lambda s, e: -105,
        "argmax": lambda s, e: -50 + s,
    }


def squeeze_dpo():
    """DPO with the squeeze: chosen up then below its start, everything else down, argmax up, margin up."""
    return {
        "chosen": lambda s, e: -100 + (2 * s if s <= 2 else 4 - 3 * (s - 2)),
        "rejected": lambda s, e: -90 - 10 * s,
        **{t: (lambda s, e, k=k, t=t: -150 - k - s - (t == "irr_test") * s) for k, t in enumerate(OTHERS)},
        "argmax": lambda s, e: -50 + s,
    }


# ---------------------------------------------------------------- an OpenAI-compatible endpoint on loopback


class FakeEndpoint(BaseHTTPRequestHandler):
    """/chat/completions: answers by the `behaviour` list in order (one entry per request), then 'A'."""

    behaviour: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        action = type(self).behaviour.pop(0) if type(self).behaviour else "More helpful: A"
        if action == "sleep":
            threading.Event().wait(1.0)
            action = "More helpful: A"
        if action in ("500", "401", "429"):
            self.send_response(int(action))
            if action == "429":
                self.send_header("Retry-After", "0")
            self.end_headers()
            return
        if action == "truncated":  # promises more bytes than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "200")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            return
        if action == "null":
            action = None
        payload = (
            b"{not json"
            if action == "garbage"
            else json.dumps({"choices": [{"message": {"role": "assistant", "content": action}}]}).encode()
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def trainer_args(out, **kw) -> dict:
    """The arguments of a short, deterministic TRL/transformers training of the tiny model on a CPU, into `out`."""
    return (
        dict(
            output_dir=str(out),
            max_steps=4,
            per_device_train_batch_size=2,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            seed=0,
            bf16=False,
            use_cpu=True,
            report_to="none",
        )
        | kw
    )


def decompose_rows(out, *extra) -> list[dict]:
    """One DPO update of the tiny model in float64, decomposed as `ldyn decompose` does."""
    from ldyn import cli
    from ldyn.runs.directory import RunDir

    args = [
        "decompose",
        "smollm2_sft_dpo",
        "--stage",
        "dpo",
        "model.name=tiny",
        f"output_dir={out}",
        "data.n_train=2",
        "stages.dpo.batch_size=2",
        "decompose.n=2",
        "data.max_length=48",
        "data.max_prompt_length=24",
        "model.dtype=float64",
        "stages.dpo.optim.name=sgd",
        "stages.dpo.optim.lr=1e-4",
        *extra,
    ]
    assert cli.main(args) == 0
    return sorted(RunDir(out).read("decomposition.jsonl"), key=lambda r: (r["example_id"], r["type"]))
