"""Faults: a second writer on a run directory, a diverging loss, kill -9 at chosen points (training, a probe round,
a checkpoint write) then `ldyn resume`, and a flaky judge endpoint across two runs."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import FakeEndpoint

from ldyn import cli
from ldyn.generate.judges import EndpointJudge
from ldyn.paper.winrate import compare, sampling_key
from ldyn.runs.directory import RunDir

ARGS = [
    "model.name=tiny",
    "stages.sft.steps=3",
    "stages.dpo.steps=3",
    "stages.*.batch_size=2",
    "probe.n=2",
    "probe.every=1",
    "data.n_train=4",
    "checkpoint_every=1",
]


def run_args(out, *extra):
    return ["run", "smollm2_sft_dpo", *ARGS, f"output_dir={out}", *extra]


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path, capsys):
    assert cli.main(run_args(tmp_path / "run")) == 0
    capsys.readouterr()
    holder = RunDir(tmp_path / "run").lock()  # another process would hold it the same way
    try:
        for args in (["resume", str(tmp_path / "run")], [*run_args(tmp_path / "run"), "--overwrite"]):
            assert cli.main(args) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "another ldyn process (pid " in err and "is writing this run" in err
    finally:
        holder.unlock()
    assert cli.main(["resume", str(tmp_path / "run")]) == 0  # released: the next writer may go on


def test_a_second_process_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, time
        from ldyn.runs.directory import RunDir
        held = RunDir({str(run)!r}).lock()
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match="another ldyn process"):
            RunDir(run).lock()
    finally:
        holder.kill()
        holder.wait()
    RunDir(run).lock().unlock()  # the OS released it with the process


def strict_rows(path):
    """Every line must be strict JSON: no bare NaN or Infinity."""

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def test_divergence_stops_with_one_line_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        run_args(out, "stages.sft.optim.name=sgd", "stages.sft.optim.lr=1e30", "stages.sft.optim.max_grad_norm=0")
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldyn: error:")]
    assert code == 2 and len(lines) == 1, lines  # (the progress bars before it are not errors)
    err = lines[0]
    assert "stage sft, step " in err and "stopped before applying the update" in err
    metrics = strict_rows(out / "metrics.jsonl")
    assert all(math.isfinite(m["loss"]) for m in metrics)
    stopped = int(err.split("step ")[1].split(":")[0])
    assert [m["step"] for m in metrics] == list(range(1, stopped))
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["step"] == stopped - 1
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(out / "checkpoints" / state["model"] / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    strict_rows(out / "probes.jsonl")


KILLER = """
import os, signal, sys
import ldyn.runs.directory, ldyn.train.trainer, torch
point, at = sys.argv[1], int(sys.argv[2])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "training":  # in the middle of an update
    update = ldyn.train.trainer.Trainer.update
    calls = [0]
    def killing_update(self, *a, **k):
        calls[0] += 1
        if calls[0] == at:
            die()
        return update(self, *a, **k)
    ldyn.train.trainer.Trainer.update = killing_update
elif point == "probe":  # half of a probe round's rows written, then killed
    append = ldyn.runs.directory.append_rows
    def killing_append(path, rows):
        if path.name == "probes.jsonl" and rows and rows[0]["step"] == at:
            append(path, rows[: len(rows) // 2])
            die()
        append(path, rows)
    ldyn.runs.directory.append_rows = killing_append
elif point == "checkpoint":  # the model of a checkpoint written, its optimizer state not yet
    save = torch.save
    calls = [0]
    def killing_save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == at:
            die()
        return save(obj, f, *a, **k)
    torch.save = killing_save
from ldyn import cli
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    assert cli.main(run_args(out)) == 0
    return RunDir(out)


def records(run: RunDir):
    losses = [(m["step"], round(m["loss"], 5)) for m in run.read("metrics.jsonl")]
    probes = sorted((p["step"], p["example_id"], p["type"], round(p["logp_sum"], 4)) for p in run.read("probes.jsonl"))
    return losses, probes


@pytest.mark.parametrize(
    "point,at", [("training", 2), ("training", 5), ("probe", 0), ("probe", 3), ("checkpoint", 2), ("checkpoint", 4)]
)
def test_kill_9_then_resume_gives_the_uninterrupted_records(point, at, tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, point, str(at), *run_args(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert cli.main(["resume", str(out)]) == 0
    assert records(RunDir(out)) == records(uninterrupted)


def test_a_flaky_endpoint_loses_no_judgement_across_two_runs(endpoint, tmp_path):
    prompts, a, b = ["q1", "q2", "q3"], ["x1", "x2", "x3"], ["y1", "y2", "y3"]
    FakeEndpoint.behaviour = ["sleep", "500", "truncated", "null", "401", "429", "garbage", "sleep"]
    judge = EndpointJudge(endpoint, "k", "m", timeout=0.3, retries=2)
    first = compare(prompts, a, b, judge, tmp_path / "j.jsonl")
    assert first.invalid >= 2 and first.failures  # reasons are reported, the failed ones are not final
    assert {"TimeoutError", "HTTPError 500", "HTTPError 401"} <= set(first.failures)
    asked = len(FakeEndpoint.requests)
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    decided_first = sum(r["verdict"] is not None for r in rows)
    FakeEndpoint.behaviour = []  # healthy again: "More helpful: A" to everything
    second = compare(prompts, a, b, EndpointJudge(endpoint, "k", "m", timeout=1.0, retries=2), tmp_path / "j.jsonl")
    assert second.invalid == 0 and second.wins_a + second.wins_b + second.ties == 3
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    decided = {r["key"] for r in rows if r["verdict"] is not None}
    assert len(decided) == 6  # 3 prompts × 2 orders, every one answered in the end
    assert len(FakeEndpoint.requests) - asked == 6 - decided_first  # only the failed ones were asked again


def test_a_401_is_not_retried_and_retry_after_is_honoured(endpoint):
    FakeEndpoint.behaviour = ["401"]
    judge = EndpointJudge(endpoint, "k", "m", timeout=1.0, retries=5)
    assert judge.prefer("q", "a", "b") is None and len(FakeEndpoint.requests) == 1
    FakeEndpoint.behaviour = ["429", "More helpful: B"]
    assert judge.prefer("q", "a", "b") == "B" and len(FakeEndpoint.requests) == 3


def test_the_judges_time_limit_stops_asking(endpoint):
    judge = EndpointJudge(endpoint, "k", "m", timeout=1.0, retries=3, time_limit=0.0)
    assert judge.prefer("q", "a", "b") is None and FakeEndpoint.requests == []
    assert judge.failures[-1].startswith("time limit")


def test_response_caches_are_keyed_by_checkpoint_and_sampling_settings(tmp_path):
    one, two = tmp_path / "x" / "run" / "checkpoints" / "dpo", tmp_path / "y" / "run" / "checkpoints" / "dpo"
    for folder in (one, two):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    assert sampling_key(str(one), 0, 64) != sampling_key(str(two), 0, 64)  # named alike, not the same model
    assert sampling_key(str(one), 0, 64) != sampling_key(str(one), 1, 64) != sampling_key(str(one), 0, 32)
    assert sampling_key(str(one), 0, 64) == sampling_key(str(one), 0, 64)
