"""The `ldyn` command end to end on tiny models: runs, plots, resumes, and fails cleanly on bad input."""

import hashlib
import json
import subprocess
import sys

import pytest
from helpers import cut_and_resume_equals_uninterrupted, ldyn, tiny_run_args, write_jsonl

from ldyn import cli
from ldyn.runs.directory import RunDir


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    code, out, err = ldyn(capsys, *tiny_run_args(tmp_path / "run"))
    assert code == 0, err
    run = RunDir(tmp_path / "run")
    metrics = run.read("metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["stage"] for m in metrics] == ["sft", "sft", "dpo", "dpo", "dpo"]
    assert {"loss", "logps/chosen", "logps/rejected", "rewards/margin", "grad_norm", "lr", "examples_per_s"} <= set(
        metrics[-1]
    )
    probes = run.read("probes.jsonl")
    assert sorted({p["step"] for p in probes}) == [0, 2, 4, 5]  # step 0, every 2, and each stage's end
    types = {p["type"] for p in probes}
    assert {"chosen", "rejected", "irr_train", "irr_test", "random_nonhum", "argmax", "except_argmax"} <= types
    assert len({(p["step"], p["example_id"], p["type"]) for p in probes}) == len(probes)
    assert (run.path / "config.yaml").read_text().startswith("# ldyn ")
    assert json.loads((run.path / "data.json").read_text())["train_pairs"] == 6
    for name in ("probe_groups.png", "probe_spread.png", "peakiness.png", "training.png", "probe_summary.csv"):
        assert (run.figures / name).stat().st_size > 0
    assert (run.checkpoints / "sft" / "config.json").is_file()  # each stage's model, loadable by HF


def test_plot_redraws_from_the_files_alone(tmp_path, capsys):
    assert ldyn(capsys, *tiny_run_args(tmp_path / "run"))[0] == 0
    for png in (tmp_path / "run" / "figures").glob("*.png"):
        png.unlink()
    code, out, err = ldyn(capsys, "plot", str(tmp_path / "run"))
    assert code == 0 and "probe_groups.png" in out
    assert (tmp_path / "run" / "figures" / "probe_groups.png").is_file()


def test_interrupted_run_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    cut_and_resume_equals_uninterrupted(tmp_path, capsys, monkeypatch, ["checkpoint_every=1", "mixed_precision=no"])


def digest(path):
    return {p.relative_to(path): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(tiny_run_args(out)) == 0
    return out


GOOD = b'{"prompt": "Q?", "chosen": " yes", "rejected": " no"}\n'
NO_REJECTED = b'{"prompt": "Q", "chosen": " a"}\n'
EMPTY_CHOSEN = b'{"prompt": "Q", "chosen": "  ", "rejected": " n"}\n'
NOT_UTF8 = b'{"prompt": "Q\xff", "chosen": " a", "rejected": " b"}\n'


def pairs_override(tmp_path, content: bytes) -> list[str]:
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    return [f"data.train={path}"]


def probe_override(tmp_path) -> list[str]:
    path = write_jsonl(tmp_path / "probe.jsonl", [{"prompt": "Q", "chosen": " a"}])
    return [f"probe.path={path}", "probe.types=chosen,irr_test"]


BAD_INPUTS = {
    "malformed JSON": (lambda t: pairs_override(t, GOOD + b"{oops\n" + GOOD), "p.jsonl:2: malformed JSON"),
    "missing field": (lambda t: pairs_override(t, GOOD + NO_REJECTED), "p.jsonl:2: field 'rejected': missing"),
    "empty field": (lambda t: pairs_override(t, GOOD * 2 + EMPTY_CHOSEN), "p.jsonl:3: field 'chosen': is empty"),
    "non-UTF-8": (lambda t: pairs_override(t, GOOD + NOT_UTF8), "p.jsonl:2: not valid UTF-8"),
    "probe type the file lacks": (
        probe_override,
        "probe.jsonl:1: field 'irr_test': probe type 'irr_test' is not in this file",
    ),
    "unknown model": (
        lambda t: ["model.name=no-such-org/no-such-model"],
        "cannot load model 'no-such-org/no-such-model'",
    ),
    "unknown loss": (lambda t: ["stages.dpo.loss.name=dpoo"], "unknown loss 'dpoo' (did you mean 'dpo'?)"),
    "unknown optimizer": (lambda t: ["stages.sft.optim.name=adam"], "unknown optimizer 'adam' (did you mean 'adamw'?)"),
    "unknown config key": (
        lambda t: ["stages.dpo.optim.lrr=1"],
        "unknown key 'stages.dpo.optim.lrr' (did you mean 'lr'?)",
    ),
    "missing data file": (lambda t: [f"data.train={t / 'nope.jsonl'}"], "nope.jsonl: cannot read"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_exit_2_and_loses_nothing(case, tmp_path, capsys, finished_run):
    before = digest(finished_run)
    make_overrides, expected = BAD_INPUTS[case]
    code, out, err = ldyn(capsys, *tiny_run_args(finished_run, *make_overrides(tmp_path)), "--overwrite")
    assert code == 2
    assert err.startswith("ldyn: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert "Traceback" not in err
    assert digest(finished_run) == before  # the earlier run's files are untouched


def test_missing_required_value_fails_before_loading(capsys):
    code, _, err = ldyn(capsys, "run", "hh_probe_sft")
    assert code == 2 and "missing required values: data.train, probe.path" in err


def test_existing_run_is_not_replaced_without_overwrite(capsys, finished_run):
    code, _, err = ldyn(capsys, *tiny_run_args(finished_run))
    assert code == 2 and "already holds a run" in err


def test_installed_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ldyn.cli", "run", "no_such_recipe"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ldyn: error: unknown recipe 'no_such_recipe'")
    assert "Traceback" not in proc.stderr


def test_ls_lists_every_loss(capsys):
    code, out, _ = ldyn(capsys, "ls", "losses")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [
        "sft",
        "dpo",
        "ipo",
        "cdpo",
        "slic",
        "sppo",
        "rpo",
        "dpop",
        "simpo",
        "grpo",
    ]


def test_cuda_graphs_without_a_gpu_train_as_usual_with_a_note(tmp_path, capsys):
    plain = tiny_run_args(tmp_path / "plain")
    code, _, err = ldyn(capsys, *tiny_run_args(tmp_path / "graphs", "cuda_graphs=true"))
    assert code == 0, err
    assert err.count("cuda_graphs has no effect without a GPU") == 1  # once per run, not per stage
    assert ldyn(capsys, *plain)[0] == 0
    losses = [[m["loss"] for m in RunDir(tmp_path / name).read("metrics.jsonl")] for name in ("plain", "graphs")]
    assert losses[0] == losses[1]


def test_ls_losses_shows_what_each_needs_and_its_params(capsys):
    lines = dict(line.split(maxsplit=1) for line in ldyn(capsys, "ls", "losses")[1].splitlines())
    assert lines["sft"].startswith("Supervised finetuning") and lines["sft"].endswith(
        "(needs chosen only; params: none)"
    )
    assert lines["cdpo"].endswith("(needs reference, rejected; params: beta, label_smoothing)")
    assert lines["simpo"].endswith("(needs rejected; params: beta, simpo_gamma)")


@pytest.mark.parametrize("what", ["recipes", "suites"])
def test_ls_recipes_and_suites_describe_each_in_one_line(what, capsys):
    from ldyn.config import recipe_names, suite_names

    code, out, _ = ldyn(capsys, "ls", what)
    assert code == 0
    rows = [line.split(maxsplit=1) for line in out.splitlines()]
    assert [name for name, _ in rows] == (recipe_names() if what == "recipes" else suite_names())
    for name, description in rows:
        assert 20 <= len(description) <= 120 and not description.startswith("#"), (name, description)
    if what == "recipes":
        assert dict(rows)["smollm2_sft_dpo"].startswith("The embedded default: SFT then off-policy DPO")


def test_list_overrides_take_brackets_on_the_command_line(capsys):
    code, out, err = ldyn(
        capsys, "config", "smollm2_sft_dpo", "report_to=[tensorboard]", "--probe.types=[chosen, rejected]"
    )
    assert code == 0, err
    assert "report_to:\n- tensorboard\n" in out and "  types:\n  - chosen\n  - rejected\n" in out


def test_a_bad_list_element_is_one_line_exit_2(capsys):
    code, _, err = ldyn(capsys, "config", "smollm2_sft_dpo", "report_to=[tensorboard,mlflow]")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("ldyn: error: field 'report_to': unknown value 'mlflow'")


def test_config_keys_lists_every_key_with_type_default_and_help(capsys):
    code, out, err = ldyn(capsys, "config", "--keys")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert {"name", "report_to", "probe.every", "model.peft.r", "stages.<i>.optim.lr", "stages.<i>.loss.beta"} <= set(
        rows
    )
    assert rows["probe.every"].split()[1:4] == ["int", "=", "5"] and "probe at step 0" in rows["probe.every"]
    assert rows["stages.<i>.steps"].split()[1:4] == ["int", "=", "???"]
    code, out, _ = ldyn(capsys, "config", "smollm2_sft_dpo", "--keys", "stages.dpo.optim", "stages.dpo.optim.lr=3e-6")
    assert code == 0
    lines = out.splitlines()
    assert all(line.startswith("stages.dpo.optim.") for line in lines) and len(lines) == 6
    assert [line.split()[1:4] for line in lines if line.startswith("stages.dpo.optim.lr ")] == [["float", "=", "3e-06"]]


def test_config_keys_takes_a_prefix_and_a_recipe_with_required_values(capsys):
    code, out, _ = ldyn(capsys, "config", "--keys", "probe")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == [
        "probe.path",
        "probe.n",
        "probe.types",
        "probe.every",
        "probe.batch_tokens",
        "probe.alerts",
        "probe.held_out",
    ]
    code, out, _ = ldyn(capsys, "config", "hh_probe_sft", "--keys", "data.train")  # not checked: ??? shows
    assert code == 0 and out.split()[:4] == ["data.train", "str", "=", "???"]
    code, _, err = ldyn(capsys, "config", "--keys", "prob.n")
    assert code == 2 and err.count("\n") == 1 and "no config key starts with 'prob.n'" in err
    code, _, err = ldyn(capsys, "config")
    assert code == 2 and err.startswith("ldyn: error: give a recipe")


@pytest.mark.parametrize("args", [["config", "smollm2_sft_dpo"], ["ls", "recipes"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(args):
    """`ldyn config smollm2_sft_dpo | head -3`: the reader here has gone before ldyn writes a byte."""
    proc = subprocess.Popen([sys.executable, "-m", "ldyn.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() in (0, 141)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
