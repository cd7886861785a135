"""`ldyn.runs.diagnose` on hand-built runs: each rule fires on its pattern, and stays silent just below each of its
thresholds, on a flat run and when the types it needs were not probed."""

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny

from ldyn import cli
from ldyn.config import LossConfig, RunConfig, StageConfig
from ldyn.data.probesets import ROLLOUT_TYPES
from ldyn.runs import diagnose as dg
from ldyn.runs.directory import Run

N = 8  # probed prompts
STEPS = (0, 5, 10)


def path(start: float, *moves: float) -> list[float]:
    """A probe curve: its value at each round, from `start`, each round moved by the next of `moves`."""
    out = [start]
    for m in moves:
        out.append(out[-1] + m)
    return out


def curves(*, most: list[float], rest: list[float] | None = None, n_rest: int = 0) -> list[list[float]]:
    """Per prompt, a curve over STEPS: N − n_rest prompts follow `most`, the last n_rest follow `rest`."""
    return [most] * (N - n_rest) + [rest] * n_rest


def run_of(types: dict[str, list[list[float]]], loss: str = "dpo", key: str = "logp_sum", extra=None, **kw) -> Run:
    """A one-stage run named after its loss: rows of `types` (type -> per prompt, values over STEPS) in column
    `key`; `extra` adds other columns: {(type, column): per-prompt curves}."""
    stage = StageConfig(name=loss, steps=STEPS[-1], loss=LossConfig(name=loss), **kw)
    cells: dict[tuple, dict] = {}
    for (t, column), per_prompt in [((t, key), v) for t, v in types.items()] + list((extra or {}).items()):
        for e, values in enumerate(per_prompt):
            for step, value in zip(STEPS, values):
                row = cells.setdefault((step, e, t), {"step": step, "stage": loss, "example_id": f"p{e}", "type": t})
                row[column] = value
    return Run(Path("hand"), RunConfig(name="hand", stages=[stage]), [], list(cells.values()), [])


def keys(run: Run) -> list[str]:
    return [f.key for f in dg.diagnose(run)]


# ---------------------------------------------------------------- the squeezing effect


def squeeze(argmax_rise: float = 4.0, n_off: int = 1) -> dict:
    """y⁻ falls 12, the argmax rises, the other natural responses fall 2, random text rises; n_off prompts do
    the opposite."""
    return {
        "chosen": curves(most=path(-100, 0.1, 0.1)),
        "rejected": curves(most=path(-100, -6, -6), rest=path(-100, 1, 1), n_rest=n_off),
        "argmax": curves(most=path(-50, argmax_rise / 2, argmax_rise / 2), rest=path(-50, -1, 0), n_rest=n_off),
        "chosen_gptsemantic": curves(most=path(-100, -1, -1)),
        "irr_test": curves(most=path(-100, -1, -1)),
        "random_nonhum": curves(most=path(-300, 5, 5)),  # not natural language: not among "the others"
    }


def test_squeezing_fires_with_its_numbers_and_share():
    (f,) = [f for f in dg.diagnose(run_of(squeeze(argmax_rise=4.6))) if f.key == "squeezing"]
    assert f.stage == "dpo" and f.title == "squeezing effect"
    assert f.text.startswith("DPO stage 'dpo': y⁻ fell 10.2 nats on average while the argmax rose 3.9")
    assert "the other responses fell 2.0; 7 of 8 prompts (88%)" in f.text
    assert f.share == pytest.approx(7 / 8) and "\n" not in f.text
    assert f.values["others_types"] == 2 and any("extend" in lever for lever in f.levers)


def test_squeezing_is_silent_just_below_its_thresholds():
    assert "squeezing" not in keys(run_of(squeeze(argmax_rise=0.45, n_off=0)))  # the argmax rose < 0.5 nat
    assert "squeezing" not in keys(run_of(squeeze(n_off=4)))  # half the prompts: below the 60% share
    assert "squeezing" in keys(run_of(squeeze(n_off=3)))  # 5 of 8 (62%) is enough
    assert "squeezing" not in keys(run_of(squeeze(), loss="sft"))  # no rejected term: no squeeze


def test_squeezing_from_chosen_peaking_then_falling():
    peak = {"chosen": curves(most=path(-100, 3, -4), rest=path(-100, -1, -1), n_rest=2)}
    (f,) = dg.diagnose(run_of(peak))[:1]
    assert f.key == "squeezing" and "chosen peaked at step 5 (+2.0) then fell 3.2 by step 10" in f.text
    assert f.share == pytest.approx(6 / 8)
    shallow = {"chosen": curves(most=path(-100, 3, -0.4))}  # fell only 0.4 nat from its peak
    assert "squeezing" not in keys(run_of(shallow))


def test_squeezing_counts_decomposed_updates():
    run = run_of(squeeze())
    run.decomposition = [
        {"step": s, "stage": "dpo", "example_id": "p0", "type": t, "predicted": d, "predicted/mass_argmax": m}
        for s, d, m in ((1, -0.2, 0.01), (2, -0.1, 0.02), (3, 0.1, 0.01))
        for t in ("rejected", "chosen")
    ]
    (f,) = [f for f in dg.diagnose(run) if f.key == "squeezing"]
    assert "2 of 3 decomposed updates predicted y⁻ down" in f.text
    assert f.values["squeezed_updates"] == 2


# ---------------------------------------------------------------- likelihood displacement


def test_displacement_fires_and_reports_the_margin():
    types = {
        "chosen": curves(most=path(-132.7, 2, -8.7), rest=path(-132.7, 1, 1), n_rest=1),
        "rejected": curves(most=path(-130, -10, -20)),
    }
    (f,) = [f for f in dg.diagnose(run_of(types, loss="ipo")) if f.key == "displacement"]
    assert f.text.startswith("IPO stage 'ipo': chosen ended 5.6 nats below its start (-132.7 → -138.3")
    assert "margin over y⁻ grew 24.4" in f.text and f.text.endswith("7 of 8 prompts (88%)")


def test_displacement_is_silent_just_below_its_thresholds():
    assert "displacement" not in keys(run_of({"chosen": curves(most=path(-100, -0.2, -0.2))}))  # 0.4 nat
    half = {"chosen": curves(most=path(-100, -3, -3), rest=path(-100, 1, 1), n_rest=4)}  # 4 of 8 fell
    assert "displacement" not in keys(run_of(half))
    assert "displacement" not in keys(run_of({"chosen": curves(most=path(-100, -3, -3))}, loss="sft"))


# ---------------------------------------------------------------- the SFT hallucination signature


def test_hallucination_fires_against_unseen_responses():
    types = {"irr_train": curves(most=path(-90, 10, 10.8)), "irr_test": curves(most=path(-90, 2, 1.7))}
    (f,) = dg.diagnose(run_of(types, loss="sft"))
    assert f.key == "hallucination" and f.title == "SFT hallucination signature"
    assert f.text == (
        "SFT stage 'sft': other prompts' responses (irr_train) rose 20.8 nats on average, 17.1 more than unseen "
        "ones (irr_test, +3.7); 8 of 8 prompts (100%)"
    )


def test_hallucination_against_random_responses_without_irr_test():
    types = {"irr_train": curves(most=path(-90, 1, 1)), "random_permute": curves(most=path(-200, -2, -2))}
    (f,) = dg.diagnose(run_of(types, loss="sft", extend=True))
    assert "more than random ones (random_*, -4.0)" in f.text


def test_hallucination_is_silent_just_below_its_thresholds():
    close = {"irr_train": curves(most=path(-90, 1, 1)), "irr_test": curves(most=path(-90, 0.8, 0.8))}  # gap 0.4
    assert keys(run_of(close, loss="sft")) == []
    small = {"irr_train": curves(most=path(-90, 0.2, 0.2)), "irr_test": curves(most=path(-90, -5, -5))}
    assert keys(run_of(small, loss="sft")) == []  # irr_train rose only 0.4 nat
    rising = {"irr_train": curves(most=path(-90, 10, 10)), "irr_test": curves(most=path(-90, 1, 1))}
    assert "hallucination" not in keys(run_of(rising, loss="dpo"))  # not an SFT stage
    assert "hallucination" not in keys(run_of(rising, loss="sft", target="irr_hum"))  # not trained on chosen


# ---------------------------------------------------------------- growing peakiness


def peaky(mass=(0.4, 0.5, 0.6), a_norm=(220.0, 222.0, 225.0), entropy=(2.0, 1.8, 1.6)) -> Run:
    extra = {
        ("argmax", "logp_mean"): curves(most=[math.log(m) for m in mass]),
        ("chosen", "a_norm"): curves(most=list(a_norm)),
        ("chosen", "entropy"): curves(most=list(entropy)),
    }
    return run_of({"chosen": curves(most=path(-100, 0, 0))}, loss="sft", extra=extra)


def test_peakiness_fires_on_all_three_signals():
    (f,) = dg.diagnose(peaky())
    assert f.key == "peakiness"
    assert f.text == (
        "SFT stage 'sft': along chosen the argmax's per-token mass rose 0.40 → 0.60, ‖A‖_F rose 2.3% and the "
        "entropy fell 0.40 nat/token; 8 of 8 prompts (100%)"
    )
    assert f.values["passed"] == ["a_norm", "argmax_mass", "entropy"]


def test_peakiness_is_silent_just_below_its_thresholds():
    assert dg.diagnose(peaky(mass=(0.4, 0.42, 0.44), a_norm=(220, 221, 221.9), entropy=(2.0, 1.95, 1.91))) == []
    (f,) = dg.diagnose(peaky(mass=(0.4, 0.42, 0.44)))  # two of the three signals are enough
    assert f.values["passed"] == ["a_norm", "entropy"] and "argmax" not in f.text


def test_peakiness_reads_what_the_rows_have():
    only_entropy = {("chosen", "entropy"): curves(most=[2.0, 1.8, 1.6])}
    (f,) = dg.diagnose(run_of({"chosen": curves(most=path(-100, 0, 0))}, loss="sft", extra=only_entropy))
    assert f.values["passed"] == ["entropy"]
    one_of_two = {("chosen", "entropy"): curves(most=[2.0, 1.8, 1.6]), ("chosen", "a_norm"): curves(most=[220] * 3)}
    assert dg.diagnose(run_of({"chosen": curves(most=path(-100, 0, 0))}, loss="sft", extra=one_of_two)) == []
    for column, values in (("entropy", [2.0, 1.95, 1.91]), ("a_norm", [220.0, 221.0, 221.9])):  # each just below
        alone = {("chosen", column): curves(most=values)}
        assert dg.diagnose(run_of({"chosen": curves(most=path(-100, 0, 0))}, loss="sft", extra=alone)) == []


# ---------------------------------------------------------------- over-optimisation (Shi et al.'s top-k signs)


def top_k(entropy=(1.2, 1.1, 0.9), mass=(0.9, 0.87, 0.83), n_off: int = 1) -> Run:
    extra = {
        ("chosen", "topk_entropy"): curves(most=list(entropy), rest=[1.2, 1.3, 1.4], n_rest=n_off),
        ("chosen", "topk_mass"): curves(most=list(mass), rest=[0.9, 0.9, 0.9], n_rest=n_off),
    }
    return run_of({"chosen": curves(most=path(-100, 0, 0))}, extra=extra)


def test_over_optimisation_fires_on_both_top_k_signs():
    (f,) = dg.diagnose(top_k())
    assert f.key == "over_optimisation"
    assert f.text == (
        "DPO stage 'dpo': along chosen the top-10 entropy fell 0.24 nat/token and the top-10 mass fell 0.90 → 0.84; "
        "7 of 8 prompts (88%)"
    )


def test_over_optimisation_needs_both_signs_past_their_thresholds():
    assert dg.diagnose(top_k(entropy=(1.2, 1.15, 1.1))) == []  # entropy falls (7 × 0.1 − 0.2) / 8 = 0.0625 in the mean
    assert dg.diagnose(top_k(mass=(0.9, 0.88, 0.85))) == []  # mass falls 7 × 0.05 / 8 = 0.044 in the mean
    assert dg.diagnose(top_k(n_off=4)) == []  # half the prompts: not a majority
    assert dg.diagnose(top_k(mass=(0.9, 0.95, 0.99))) == []  # a rising top-k mass is peakiness, not this


# ---------------------------------------------------------------- nothing notable, missing types, the API


def test_a_flat_run_is_nothing_notable():
    flat = {t: curves(most=path(-100, 0.1, -0.1)) for t in ("chosen", "rejected", "argmax", "irr_train", "irr_test")}
    for loss in ("dpo", "sft"):
        assert dg.diagnose(run_of(flat, loss=loss)) == []
    assert dg.format_findings([]) == ["nothing notable"]


def test_missing_types_and_values_say_nothing():
    assert dg.diagnose(run_of({"chosen_gptformat": curves(most=path(-100, -9, -9))})) == []  # no chosen, no y⁻
    one_round = run_of({"chosen": curves(most=path(-100, -9, -9))})
    one_round.probes = [r for r in one_round.probes if r["step"] == 0]
    assert dg.diagnose(one_round) == []
    missing = run_of({"chosen": [[-100, None, None]] * N, "rejected": [[np.nan] * 3] * N})
    assert dg.diagnose(missing) == []
    assert dg.diagnose(Run(Path("empty"), RunConfig(name="empty"), [], [], [])) == []


def test_changed_findings_are_the_new_and_the_changed():
    a = dg.Finding("squeezing", "dpo", "t", "y⁻ fell 1.0", 1.0, "m")
    b = dg.Finding("displacement", "dpo", "t", "chosen ended 1.0 below", 1.0, "m")
    moved = dg.Finding("squeezing", "dpo", "t", "y⁻ fell 2.0", 1.0, "m")
    assert dg.changed_findings([], [a]) == [a]
    assert dg.changed_findings([a], [a, b]) == [b]
    assert dg.changed_findings([a, b], [moved, b]) == [moved]
    lines = dg.format_findings([b])
    assert lines[0] == "t: chosen ended 1.0 below" and lines[1] == "    why: m"


def test_a_real_tiny_run(tmp_path):
    assert cli.main(tiny(tmp_path / "run")) == 0
    (findings,) = dg.diagnose_paths([tmp_path / "run"]).values()
    assert isinstance(findings, list) and all(isinstance(f, dg.Finding) for f in findings)
    assert dg.format_findings(findings)


# ---------------------------------------------------------------- RL stages: the step-0 rollouts


def rl(correct=(0.1, 0.1), incorrect=(-1.0, -1.0), n_off=2, entropy=None, loss="grpo") -> Run:
    """A GRPO stage's rollouts: 6 prompts' correct rollouts follow `correct`, n_off rise 2 nats; the incorrect fall."""
    types = {
        "chosen": curves(most=path(-10, 0, 0)),
        "rollout_correct": curves(most=path(-5, *correct), rest=path(-5, 1, 1), n_rest=n_off),
        "rollout_incorrect": curves(most=path(-8, *incorrect)),
    }
    extra = {(t, "entropy"): curves(most=list(entropy)) for t in ROLLOUT_TYPES} if entropy else None
    return run_of(types, loss=loss, extra=extra)


def test_lazy_likelihood_displacement_fires_with_its_numbers_and_share():
    (f,) = dg.diagnose(rl())
    assert f.key == "lazy_likelihood_displacement" and f.share == 0.75
    assert f.text == (
        "GRPO stage 'grpo': its correct step-0 rollouts moved +0.65 nats (less than +0.5 on 6 of 8 prompts (75%), "
        "down on 0) while its incorrect ones fell 2.00"
    )
    (f,) = dg.diagnose(rl(correct=(-0.5, -0.5)))
    assert "down on 6" in f.text and f.values["fell"] == 0.75


def test_lazy_likelihood_displacement_is_silent_just_below_its_thresholds():
    assert dg.diagnose(rl(incorrect=(-0.2, -0.29))) == []  # the negative side barely moved: nothing acted
    assert dg.diagnose(rl(correct=(0.25, 0.25))) == []  # the correct rollouts rose 0.5 nat
    assert dg.diagnose(rl(n_off=4)) == []  # half the prompts, not a clear majority
    assert dg.diagnose(rl(loss="dpo")) == []  # not an RL stage


def test_entropy_collapse_fires_when_the_policys_entropy_halves():
    """The stage's `entropy` metric (its own completions'), the last quarter of updates against the first."""

    def collapsing(entropies, loss="grpo"):
        run = rl(correct=(1, 1), entropy=(1.5, 1.45, 1.4), loss=loss)
        run.metrics = [{"step": i + 11 - len(entropies), "stage": loss, "entropy": h, "cov_logp_advantage": 0.1}
                       for i, h in enumerate(entropies)]  # fmt: skip
        return run

    (f,) = dg.diagnose(collapsing([2.0, 1.8, 1.2, 1.0, 0.9, 0.8, 0.6, 0.4]))
    assert f.key == "entropy_collapse" and f.share is None
    assert f.text == (
        "GRPO stage 'grpo': the entropy of its own completions fell 1.90 → 0.50 nat/token (the first against the "
        "last 2 of 8 updates, 74% down); Cov(log π, A) averaged +0.100; along its step-0 rollouts 1.50 → 1.40"
    )
    assert dg.diagnose(collapsing([2.0, 1.8, 1.2, 1.0, 0.9, 0.8, 1.0, 0.95])) == []  # just above half
    assert dg.diagnose(collapsing([2.0, 1.0, 0.5])) == []  # fewer than 4 updates: no quarter
    assert dg.diagnose(collapsing([2.0, 1.8, 1.2, 1.0, 0.9, 0.8, 0.6, 0.4], loss="dpo")) == []
