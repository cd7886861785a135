"""Bad input through the CLI, table-driven: exit 2, one `ldyn: error:` line naming the key or file, no traceback,
and nothing that existed before is changed (an earlier run's files, a folder of user files, the target folder)."""

import hashlib
import shutil

import pytest
from helpers import tiny, write_jsonl

from ldyn import cli

GOOD = b'{"prompt": "Q?", "chosen": " yes", "rejected": " no"}\n'


def digest(path):
    return {p.relative_to(path): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A finished run, a folder of user files, a file, a run with a broken config.yaml, data files."""
    root = tmp_path_factory.mktemp("bad")
    assert cli.main(tiny(root / "run")) == 0
    (root / "user").mkdir()
    (root / "cwd").mkdir()
    (root / "user" / "notes.txt").write_text("precious")
    (root / "afile").write_text("not a folder")
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("name: [unclosed\n")
    (root / "typed").mkdir()
    (root / "typed" / "config.yaml").write_text("name: x\nseed: many\n")
    (root / "recipe.yaml").write_text("name: x\nstages: [{name: sft, steps: 2\n")
    (root / "empty.jsonl").write_bytes(b"\n\n")
    (root / "bad.jsonl").write_bytes(GOOD + b"{oops\n")
    (root / "norej.jsonl").write_bytes(GOOD + b'{"prompt": "Q", "chosen": " a"}\n')
    (root / "latin1.jsonl").write_bytes(GOOD + b'{"prompt": "Q\xff", "chosen": " a", "rejected": " b"}\n')
    write_jsonl(root / "probes3.jsonl", [{"prompt": f"Q{i}", "chosen": " a", "rejected": " b"} for i in range(3)])
    shutil.copytree(root / "run", root / "hosted")  # as LearningDynamicsCallback writes it: with its trainer's args
    (root / "hosted" / "trainer_args.json").write_text("{}\n")
    (root / "suite.yaml").write_text(f"suite: mini\noverrides: {tiny(root)[2:-1]}\nruns: [smollm2_sft_dpo]\n")
    assert cli.main(["run", str(root / "suite.yaml"), "--out", str(root / "suite")]) == 0
    return root


NEW = "fresh"  # the output folder of the cases that would start a new run: it must not appear
CASES = {  # name: (arguments, given the workspace root; what the error line must contain)
    "β = 0 for DPO": (lambda r: tiny(r / NEW, "stages.dpo.loss.beta=0"), "field 'stages.dpo.loss.beta': must be > 0"),
    "β < 0 for IPO": (
        lambda r: tiny(r / NEW, "stages.dpo.loss.name=ipo", "stages.dpo.loss.beta=-1"),
        "stages.dpo.loss.beta",
    ),
    "max_prompt_length = 0": (lambda r: tiny(r / NEW, "data.max_prompt_length=0"), "data.max_prompt_length"),
    "max_length = 1": (lambda r: tiny(r / NEW, "data.max_length=1"), "data.max_length"),
    "n_train < 0": (lambda r: tiny(r / NEW, "data.n_train=-1"), "field 'data.n_train': must be >= 0"),
    "probe.n < 0": (lambda r: tiny(r / NEW, "probe.n=-2"), "field 'probe.n': must be >= 0"),
    "probe.n over the file": (
        lambda r: tiny(r / NEW, f"probe.path={r / 'probes3.jsonl'}", "probe.n=10"),
        "probe.n=10 asks for more prompts than the probe set has (3)",
    ),
    "negative lr": (lambda r: tiny(r / NEW, "stages.sft.optim.lr=-1e-5"), "field 'stages.sft.optim.lr': must be > 0"),
    "zero lr": (lambda r: tiny(r / NEW, "stages.*.optim.lr=0"), "must be > 0"),
    "negative weight decay": (lambda r: tiny(r / NEW, "stages.sft.optim.weight_decay=-0.1"), "weight_decay"),
    "grad_accum 0": (lambda r: tiny(r / NEW, "stages.sft.grad_accum=0"), "stages.sft.grad_accum"),
    "batch_size 0": (lambda r: tiny(r / NEW, "stages.dpo.batch_size=0"), "stages.dpo.batch_size"),
    "negative steps": (lambda r: tiny(r / NEW, "stages.dpo.steps=-1"), "stages.dpo.steps"),
    "negative probe.every": (lambda r: tiny(r / NEW, "probe.every=-1"), "probe.every"),
    "decompose.n 0": (lambda r: tiny(r / NEW, "decompose.n=0"), "decompose.n"),
    "probe.batch_tokens 0": (lambda r: tiny(r / NEW, "probe.batch_tokens=0"), "probe.batch_tokens"),
    "label smoothing ≥ 0.5": (
        lambda r: tiny(r / NEW, "stages.dpo.loss.name=cdpo", "stages.dpo.loss.label_smoothing=0.7"),
        "label_smoothing",
    ),
    "CUDA graphs and compile": (
        lambda r: tiny(r / NEW, "cuda_graphs=true", "compile=default"),
        "field 'cuda_graphs': replaces compile",
    ),
    "CUDA graphs and accumulation": (
        lambda r: tiny(r / NEW, "cuda_graphs=true", "stages.sft.grad_accum=2"),
        "field 'cuda_graphs': replays one",
    ),
    "CUDA graphs' bucket 0": (
        lambda r: tiny(r / NEW, "cuda_graphs=true", "cuda_graphs_pad_to=0"),
        "cuda_graphs_pad_to",
    ),
    "zero judge timeout": (lambda r: tiny(r / NEW, "judge.timeout=0"), "judge.timeout"),
    "zero temperature": (
        lambda r: tiny(r / NEW, "stages.dpo.sample.responses=rejected", "stages.dpo.sample.temperature=0"),
        "stages.dpo.sample",
    ),
    "extend with DPO": (lambda r: tiny(r / NEW, "stages.dpo.extend=true"), "extend"),
    "override without =": (lambda r: tiny(r / NEW, "stages"), "unrecognised argument 'stages'"),
    "unknown precision": (lambda r: tiny(r / NEW, "mixed_precision=fp8"), "unknown value 'fp8'"),
    "unknown tracker": (lambda r: tiny(r / NEW, "report_to=mlflow"), "unknown value 'mlflow'"),
    "unknown optimizer": (lambda r: tiny(r / NEW, "stages.sft.optim.name=adam"), "unknown optimizer 'adam'"),
    "unknown loss": (lambda r: tiny(r / NEW, "stages.dpo.loss.name=dpoo"), "unknown loss 'dpoo'"),
    "unknown key": (lambda r: tiny(r / NEW, "probe.evry=3"), "unknown key 'probe.evry' (did you mean 'every'?)"),
    "unknown stage": (lambda r: tiny(r / NEW, "stages.dop.steps=1"), "unknown stage 'dop'"),
    "wrong type": (lambda r: tiny(r / NEW, "stages.sft.steps=many"), "expected an integer, got 'many'"),
    "output_dir is a file": (lambda r: tiny(r / "afile"), "output_dir is a file"),
    "overwrite a folder of user files": (
        lambda r: [*tiny(r / "user"), "--overwrite"],
        "--overwrite replaces ldyn run directories only",
    ),
    "overwrite the working directory": (
        lambda r: [*tiny(".", "output_dir=."), "--overwrite"],
        "would delete the working directory",
    ),
    "existing run without --overwrite": (lambda r: tiny(r / "run"), "continue it with `ldyn resume"),
    "malformed JSON": (lambda r: tiny(r / NEW, f"data.train={r / 'bad.jsonl'}"), "bad.jsonl:2: malformed JSON"),
    "missing rejected": (
        lambda r: tiny(r / NEW, f"data.train={r / 'norej.jsonl'}"),
        "norej.jsonl:2: field 'rejected': missing",
    ),
    "not UTF-8": (lambda r: tiny(r / NEW, f"data.train={r / 'latin1.jsonl'}"), "latin1.jsonl:2: not valid UTF-8"),
    "missing data file": (lambda r: tiny(r / NEW, f"data.train={r / 'nope.jsonl'}"), "nope.jsonl: cannot read"),
    "empty data file": (lambda r: tiny(r / NEW, f"data.train={r / 'empty.jsonl'}"), "no examples found"),
    "broken recipe YAML": (lambda r: ["run", str(r / "recipe.yaml")], "recipe.yaml:"),
    "unknown recipe": (lambda r: ["run", "smollm2_sft_dpp"], "did you mean 'smollm2_sft_dpo'"),
    "plot of a broken config.yaml": (lambda r: ["plot", str(r / "broken")], "broken/config.yaml:"),
    "resume of a broken config.yaml": (lambda r: ["resume", str(r / "broken")], "broken/config.yaml:"),
    "resume of a mistyped config.yaml": (lambda r: ["resume", str(r / "typed")], "field 'seed': expected an integer"),
    "resume of a callback's run": (
        lambda r: ["resume", str(r / "hosted")],
        "trainer.train(resume_from_checkpoint=...)",
    ),
    "resume of a non-run": (lambda r: ["resume", str(r / "user")], "nothing to resume"),
    "export of a non-run": (lambda r: ["export", str(r / "user")], "not a run directory"),
    "report of an empty folder": (lambda r: ["report", str(r / "broken" / "nothing")], "not a run directory"),
    "output_dir under a file": (lambda r: tiny(r / "afile" / "sub"), "afile is a file, not a folder"),
    "decompose into a folder under a file": (
        lambda r: ["decompose", *tiny(r / "afile" / "sub")[1:]],
        "field 'output_dir': cannot be written",
    ),
    "suite --out is a file": (lambda r: ["run", str(r / "suite.yaml"), "--out", str(r / "afile")], "is a file"),
    "suite --out under a file": (
        lambda r: ["run", str(r / "suite.yaml"), "--out", str(r / "afile" / "s")],
        "afile is a file, not a folder",
    ),
    "suite into a folder of user files": (
        lambda r: ["run", str(r / "suite.yaml"), "--out", str(r / "user")],
        "is not this suite's folder",
    ),
    "suite again with other settings": (
        lambda r: ["run", str(r / "suite.yaml"), "--out", str(r / "suite"), "stages.dpo.optim.lr=3e-5"],
        "field 'stages.dpo.optim.lr': the suite's run 'smollm2_sft_dpo' was trained with 1e-05",
    ),
    "win rate of -1 prompts": (
        lambda r: [
            "winrate",
            "tiny",
            "tiny",
            "--prompts",
            str(r / "probes3.jsonl"),
            "--n",
            "-1",
            "--out",
            str(r / NEW),
        ],
        "argument --n: must be >= 1, got -1",
    ),
    "win rate with no new tokens": (
        lambda r: ["winrate", "tiny", "tiny", "--prompts", str(r / "probes3.jsonl"), "--max-new-tokens", "0"],
        "argument --max-new-tokens: must be >= 1, got 0",
    ),
    "win rate with a time limit of words": (
        lambda r: ["winrate", "tiny", "tiny", "--prompts", str(r / "probes3.jsonl"), "--judge-time-limit", "soon"],
        "argument --judge-time-limit: expected a number, got 'soon'",
    ),
    "squeeze toy checking no heads": (lambda r: ["toy", "squeeze", "--check", "0"], "argument --check: must be >= 1"),
    "unknown export format": (lambda r: ["export", str(r / "run"), "--format", "xlsx"], "invalid choice: 'xlsx'"),
}


def assert_refused(args, expected, workspace, capsys, watched=("run", "user", "broken")):
    """`ldyn ARGS` exits 2 with one `ldyn: error:` line holding `expected`, no traceback, and the watched folders of
    the workspace, its file and the fresh output folder as they were."""
    before = {name: digest(workspace / name) for name in watched}
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse's own errors (a bad choice) exit from inside the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("ldyn: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert "Traceback" not in err
    assert {name: digest(workspace / name) for name in before} == before
    assert (workspace / "afile").read_text() == "not a folder"
    assert not (workspace / NEW).exists()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_with_one_line_and_nothing_changes(case, workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace / "cwd")
    make, expected = CASES[case]
    assert_refused(make(workspace), expected, workspace, capsys, watched=("run", "user", "broken", "suite", "hosted"))


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_a_jsonl_file_with_a_byte_order_mark_is_read(tmp_path, capsys):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + GOOD * 4)
    assert cli.main(tiny(tmp_path / "run", f"data.train={data}")) == 0, capsys.readouterr().err
