"""Bad checkpoints and run directories through the CLI, table-driven as `test_bad_inputs.py`: LoRA checkpoints as
`model.name` (a corrupt or partial adapter chain, a stage folder copied alone, a PEFT adapter without a reachable
base) and `ldyn resume` of damaged runs (missing or truncated weights and optimizer files, a wrong state.json) or
of a config.yaml changed in what was trained. Each is one `ldyn: error:` line, exit 2, nothing written. Then what
must keep working: full finetuning and LoRA from a LoRA checkpoint, and resume with a changed cadence."""

import json
import shutil

import pytest
import torch
import yaml
from helpers import tiny
from test_bad_inputs import NEW, assert_refused

from ldyn import cli
from ldyn.config import ModelConfig
from ldyn.models.load import load_model
from ldyn.runs.directory import ROW_FILES, RunDir
from ldyn.train import experiment

LORA = ("model.peft.r=4", "model.peft.alpha=8")
WATCHED = ("run", "lora", "cutfull", "cutlora", "cases", "user", "broken")


def cut(out, *extra):
    """A run killed after update 4 (mid-DPO, 3 DPO updates), its last checkpoint `last-000003` with an optimizer."""

    class Killed(experiment.MetricsLogger):
        def on_step_end(self, state):
            super().on_step_end(state)
            if state.step == 4:
                raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "MetricsLogger", Killed)
        assert cli.main(tiny(out, "stages.dpo.steps=3", "checkpoint_every=1", *extra)) == 130


def edit_config(run, key, value):
    """Set a dotted key of a run's config.yaml, as a user editing it would."""
    path = run / "config.yaml"
    data = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = next(s for s in node if s["name"] == part) if isinstance(node, list) else node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def state(run, **changes):
    path = run / "checkpoints" / "state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Finished full and LoRA runs, the same two cut mid-DPO, and under cases/ one damaged copy per case."""
    root = tmp_path_factory.mktemp("runs")
    assert cli.main(tiny(root / "run")) == 0
    assert cli.main(tiny(root / "lora", *LORA)) == 0
    cut(root / "cutfull")
    cut(root / "cutlora", *LORA)
    (root / "user").mkdir()
    (root / "user" / "notes.txt").write_text("precious")
    (root / "cwd").mkdir()
    (root / "afile").write_text("not a folder")
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("name: [unclosed\n")
    cases = root / "cases"

    def copy(source, name):
        return shutil.copytree(root / source, cases / name)

    for name, text in [
        ("chain_json", "{oops"),
        ("chain_list", "[1, 2]"),
        ("chain_merged", '{"base": "tiny", "seed": 0, "merged": "../sft"}'),
        ("chain_nobase", '{"seed": 0, "merged": ["../sft"]}'),
    ]:
        (copy("lora/checkpoints", name) / "dpo" / "ldyn_adapter_chain.json").write_text(text)
    copy("lora/checkpoints/dpo", "alone/moved")  # `cp -r run/checkpoints/dpo x/moved`
    (copy("lora/checkpoints", "config_json") / "dpo" / "adapter_config.json").write_text("{not json")
    peft_saved = copy("lora/checkpoints/sft", "peft_nobase")  # the first stage's adapter: PEFT's own layout
    (peft_saved / "ldyn_adapter_chain.json").unlink()
    unreachable = shutil.copytree(peft_saved, cases / "peft_unreachable")
    adapter_config = json.loads((unreachable / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(root / "no-such-base")
    (unreachable / "adapter_config.json").write_text(json.dumps(adapter_config))
    (copy("lora/checkpoints", "no_adapter") / "dpo" / "adapter_model.safetensors").unlink()
    truncate(copy("lora/checkpoints", "half_adapter") / "dpo" / "adapter_model.safetensors")
    truncate(copy("run/checkpoints", "half_model") / "dpo" / "model.safetensors")

    last = "checkpoints/last-000003"
    (copy("cutlora", "resume_no_adapter") / last / "adapter_model.safetensors").unlink()
    (copy("cutlora", "resume_chain") / last / "ldyn_adapter_chain.json").write_text('{"base": "tiny"')
    (copy("cutfull", "resume_no_model") / last / "model.safetensors").unlink()
    truncate(copy("cutfull", "resume_half_model") / last / "model.safetensors")
    (copy("cutfull", "resume_no_optimizer") / last / "optimizer.pt").unlink()
    truncate(copy("cutfull", "resume_half_optimizer") / last / "optimizer.pt")
    shutil.copy(root / "cutlora" / last / "optimizer.pt", copy("cutfull", "resume_other_optimizer") / last)
    shutil.rmtree(copy("cutfull", "resume_no_sft") / "checkpoints/sft")  # the DPO stage's reference
    state(copy("cutfull", "state_folder"), model="last-000009")
    state(copy("cutfull", "state_type"), step="four")
    state(copy("cutfull", "state_past"), stage_step=7)
    (copy("cutfull", "state_list") / "checkpoints/state.json").write_text("[]")
    (copy("cutfull", "state_garbage") / "checkpoints/state.json").write_bytes(b"\x00\xff garbage")
    shutil.rmtree(copy("run", "checkpoints_file") / "checkpoints")
    (cases / "checkpoints_file" / "checkpoints").write_text("garbage")
    (copy("cutfull", "frozen_yaml") / "checkpoints/config.yaml").write_text("name: [unclosed\n")

    for name, source, key, value in [
        ("changed_model", "run", "model.name", "gpt2"),
        ("changed_seed", "cutfull", "seed", 1),
        ("changed_lr", "cutfull", "stages.dpo.optim.lr", 1e-3),
        ("changed_steps", "run", "stages.dpo.steps", 5),
        ("changed_probe_n", "cutfull", "probe.n", 3),
        ("changed_precision", "cutfull", "mixed_precision", "bf16"),
        ("changed_rank", "cutlora", "model.peft.r", 8),
        ("changed_to_full", "cutlora", "model.peft.r", 0),
    ]:
        edit_config(copy(source, name), key, value)
    edit_config(copy("cutfull", "changed_stages"), "stages", [{"name": "sft", "steps": 2, "batch_size": 2}])
    early = copy("run", "killed_early")  # killed before its first checkpoint: only its step-0 rows are kept
    for folder in ("sft", "dpo"):
        shutil.rmtree(early / "checkpoints" / folder)
    (early / "checkpoints" / "state.json").unlink()
    for name in ROW_FILES:
        if (early / name).is_file():
            RunDir(early).keep_until(name, 0)
    edit_config(early, "data.n_train", 3)
    return root


def fresh(r, *extra):
    return tiny(r / NEW, *extra)


def model_from(folder):
    return lambda r: fresh(r, f"model.name={r / 'cases' / folder}")


def resume(name):
    return lambda r: ["resume", str(r / "cases" / name)]


CASES = {  # name: (arguments, given the workspace root; what the error line must contain)
    "chain not JSON": (model_from("chain_json/dpo"), "chain_json/dpo/ldyn_adapter_chain.json:1: malformed JSON"),
    "chain not an object": (model_from("chain_list/dpo"), "ldyn_adapter_chain.json: must be a JSON object, got list"),
    "chain's merged not a list": (model_from("chain_merged/dpo"), "field 'merged': must be a list of adapter folders"),
    "chain without base": (model_from("chain_nobase/dpo"), "ldyn_adapter_chain.json: field 'base': missing"),
    "stage folder copied alone": (model_from("alone/moved"), "copy the whole checkpoints folder"),
    "adapter_config.json not JSON": (model_from("config_json/dpo"), "dpo/adapter_config.json:1: malformed JSON"),
    "PEFT adapter without a base": (model_from("peft_nobase"), "set base_model_name_or_path"),
    "PEFT adapter with an unreachable base": (
        model_from("peft_unreachable"),
        "adapter_config.json: field 'base_model_name_or_path': the adapter's base model: cannot load model",
    ),
    "adapter weights missing": (model_from("no_adapter/dpo"), "adapter_model.safetensors: the adapter's weights are"),
    "adapter weights truncated": (model_from("half_adapter/dpo"), "adapter_model.safetensors: cannot load the adapter"),
    "full model truncated": (model_from("half_model/dpo"), "a local folder, but not a whole model checkpoint"),
    "resume, adapter deleted mid-stage": (resume("resume_no_adapter"), "last-000003/adapter_model.safetensors: the"),
    "resume, chain cut short": (resume("resume_chain"), "last-000003/ldyn_adapter_chain.json:1: malformed JSON"),
    "resume, model.safetensors deleted": (resume("resume_no_model"), "last-000003/model.safetensors: missing from"),
    "resume, model.safetensors truncated": (
        resume("resume_half_model"),
        "last-000003/model.safetensors: cannot load the checkpoint",
    ),
    "resume, optimizer deleted": (resume("resume_no_optimizer"), "state.json: field 'optimizer': names the file"),
    "resume, optimizer truncated": (resume("resume_half_optimizer"), "optimizer.pt: cannot read the optimizer state"),
    "resume, optimizer of another model": (resume("resume_other_optimizer"), "does not fit the checkpoint's model"),
    "resume, the reference's stage deleted": (resume("resume_no_sft"), "checkpoints/sft/config.json: missing"),
    "state names no folder": (resume("state_folder"), "field 'model': names the folder"),
    "state with a wrong-typed step": (resume("state_type"), "field 'step': must be a whole number >= 0, got 'four'"),
    "state past the stage's end": (resume("state_past"), "field 'stage_step': update 7 is past the end of stage"),
    "state not an object": (resume("state_list"), "state.json: must be a JSON object, got list"),
    "state garbage": (resume("state_garbage"), "state.json: cannot read the resume state"),
    "checkpoints is a file": (resume("checkpoints_file"), "checkpoints: is not a folder"),
    "frozen config broken": (resume("frozen_yaml"), "frozen_yaml/checkpoints/config.yaml:2: invalid YAML"),
    "resume, changed model": (
        resume("changed_model"),
        "config.yaml: field 'model.name': differs from the run's checkpoint ('tiny' there, 'gpt2' here); resume with "
        "the original config or start a new run",
    ),
    "resume, changed seed": (resume("changed_seed"), "field 'seed': differs from the run's checkpoint (0 there, 1"),
    "resume, changed lr": (resume("changed_lr"), "field 'stages.dpo.optim.lr': differs"),
    "resume, changed steps": (resume("changed_steps"), "field 'stages.dpo.steps': differs"),
    "resume, changed probe.n": (resume("changed_probe_n"), "field 'probe.n': differs"),
    "resume, changed precision": (resume("changed_precision"), "field 'mixed_precision': differs"),
    "resume, changed LoRA rank": (resume("changed_rank"), "field 'model.peft.r': differs"),
    "resume, LoRA changed to full": (
        resume("changed_to_full"),
        "field 'model.peft.r': differs from the run's checkpoint (4 there, 0 here)",
    ),
    "resume, a stage removed": (resume("changed_stages"), "field 'stages': differs from the run's checkpoint (['sft'"),
    "resume, killed early, data changed": (resume("killed_early"), "field 'data.n_train': differs"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_or_run_is_refused_with_one_line_and_nothing_changes(case, root, capsys, monkeypatch):
    monkeypatch.chdir(root / "cwd")
    make, expected = CASES[case]
    assert_refused(make(root), expected, root, capsys, watched=WATCHED)


def test_there_are_at_least_twelve_cases():
    assert len(CASES) >= 12


# ---------------------------------------------------------------- what must keep working


def test_full_finetuning_from_a_lora_checkpoint_trains_every_weight(root, tmp_path):
    start = root / "lora" / "checkpoints" / "dpo"
    assert cli.main(tiny(tmp_path / "full", f"model.name={start}")) == 0
    before = load_model(ModelConfig(str(start)))[0].state_dict()
    after = load_model(ModelConfig(str(tmp_path / "full" / "checkpoints" / "dpo")))[0].state_dict()
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_lora_on_a_lora_checkpoint_resumes_and_its_checkpoint_loads(root, tmp_path):
    out = tmp_path / "lora2"
    start = f"model.name={root / 'lora' / 'checkpoints' / 'dpo'}"
    cut(out, start, *LORA)
    assert cli.main(["resume", str(out)]) == 0
    base = load_model(ModelConfig(str(root / "lora" / "checkpoints" / "dpo")))[0].state_dict()
    trained = load_model(ModelConfig(str(out / "checkpoints" / "dpo")))[0].state_dict()
    assert any(not torch.equal(base[k], trained[k]) for k in base)
    assert [m["step"] for m in RunDir(out).read("metrics.jsonl")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("source", ["run", "lora"])
def test_resuming_a_finished_run_without_its_weights_redraws_its_figures_and_keeps_its_rows(
    source, root, tmp_path, capsys
):
    """A finished run packed without weights (as `results/` keeps them) has nothing to train: resume draws its
    figures from the rows and changes none, where it used to advise --overwrite, which throws the rows away."""
    run = shutil.copytree(root / source, tmp_path / "run")
    for folder in (run / "checkpoints").iterdir():
        if folder.is_dir():
            shutil.rmtree(folder)
    shutil.rmtree(run / "figures")
    rows = {name: (run / name).read_bytes() for name in ROW_FILES if (run / name).is_file()}
    assert cli.main(["resume", str(run)]) == 0
    assert "finished all its 2 stages; nothing to train" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in rows} == rows
    assert (run / "figures" / "probe_groups.png").is_file()


def test_resume_with_a_changed_cadence_continues(root, tmp_path):
    run = shutil.copytree(root / "cutfull", tmp_path / "run")
    edit_config(run, "probe.every", 1)
    edit_config(run, "checkpoint_every", 0)
    edit_config(run, "name", "renamed")
    assert cli.main(["resume", str(run)]) == 0
    assert [m["step"] for m in RunDir(run).read("metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert sorted({p["step"] for p in RunDir(run).read("probes.jsonl")}) == [0, 2, 4, 5]


def test_a_run_from_before_the_frozen_config_still_resumes(root, tmp_path):
    run = shutil.copytree(root / "cutlora", tmp_path / "run")
    (run / "checkpoints" / "config.yaml").unlink()
    assert cli.main(["resume", str(run)]) == 0
    assert [m["step"] for m in RunDir(run).read("metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_the_keys_resume_may_change_are_config_keys_and_change_nothing_trained():
    from ldyn.config import load_config
    from ldyn.runs.resume_policy import JUDGE, MAY_CHANGE, first_difference
    from ldyn.schema import keys

    cfg = load_config("smollm2_sft_dpo")
    assert set(MAY_CHANGE) | set(JUDGE) <= {k.key for k in keys(cfg)}
    changed = load_config("smollm2_sft_dpo", ["probe.every=1", "checkpoint_every=3", "judge.model=tiny", "name=x"])
    assert first_difference(cfg, changed) is None
    ranked = ["stages.dpo.sample.responses=both", "stages.dpo.sample.rank=judge"]
    judged = load_config("smollm2_sft_dpo", ranked)
    assert first_difference(judged, load_config("smollm2_sft_dpo", [*ranked, "judge.model=tiny"]))[0] == "judge.model"
