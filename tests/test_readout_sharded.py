"""The readout decomposition under FSDP2 on 2 CPU processes (gloo): every process runs every forward, each its half
of the update batch, and the rows equal those of one process with the whole batch (`tests/fsdp_readout.py`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# the update's terms, the real step's head term and the observed change: what the processes' shares must sum to
COLUMNS = ("sgd_", "readout/", "predicted", "observed", "g_norm_sq")


def close(a: float, b: float, scale: float, rel: float = 1e-5) -> bool:
    """Within `rel` of the larger of the two or of the column's scale (float32: a near-zero entry's error is the
    column's rounding, not its own)."""
    return abs(a - b) <= rel * max(abs(a), abs(b), scale)


def assert_rows_match(got: list[dict], want: list[dict], factor: float = 1.0, rel: float = 1e-5) -> None:
    assert [(r["example_id"], r["type"]) for r in got] == [(r["example_id"], r["type"]) for r in want]
    keys = {k for k in want[0] if k.startswith(COLUMNS)}
    assert keys == {k for k in got[0] if k.startswith(COLUMNS)}
    for key in keys:
        scale = max(abs(r[key]) for r in want)
        # the observed change also carries the step's own rounding (its gradient reduce-scattered), and its mass and
        # sums over the vocabulary are differences of near-equal sums
        tol = 10 * rel if key.startswith("observed") else rel
        for a, b in zip(got, want):
            assert close(a[key], factor * b[key], factor * scale, tol), (key, a["example_id"], a[key], b[key])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_readout")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "fsdp_readout.py")]
    done = subprocess.run([*command, str(out / "rows")], cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rows.{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_sharded_readout_equals_one_process_with_the_whole_batch(results, loss):
    """FSDP2: each process's G (of its half, over 2) and its share of the prediction columns summed over the
    processes give one process's readout of the whole batch, and the real SGD step's observed change is the same."""
    one, sharded = results[0][loss]["one"], results[0][loss]["sharded"]
    assert_rows_match(sharded, one)
    assert {"sgd_positive", "readout/head_positive", "readout/backbone_positive", "observed"} <= set(one[0])
    assert ("sgd_negative" in one[0]) == (loss == "dpo")
    assert all(r["observed"] != 0.0 and r["sgd_positive"] != 0.0 for r in one)  # not vacuously equal
    assert sharded == results[1][loss]["sharded"]  # every process gets the same rows


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_a_process_without_update_examples_still_joins_every_forward(results, loss):
    """Rank 1 with no update example runs dummy forwards (else the run hangs): the update's terms are rank 0's
    over 2 (the trained loss is the mean of the processes' means), ‖G‖² a quarter of its own."""
    idle, one = results[0][loss]["idle"], results[0][loss]["idle_one"]
    predicted = [{k: v for k, v in r.items() if k.startswith(("sgd_", "readout/head_", "readout/back"))} for r in one]
    assert_rows_match(
        [{k: r[k] for k in p} | {"example_id": r["example_id"], "type": r["type"]} for r, p in zip(idle, predicted)],
        [p | {"example_id": r["example_id"], "type": r["type"]} for r, p in zip(one, predicted)],
        factor=0.5,
    )
    assert all(r["g_norm_sq"] == pytest.approx(0.25 * o["g_norm_sq"], rel=1e-5) for r, o in zip(idle, one))
    assert all(r["observed"] == 0.0 for r in idle)
