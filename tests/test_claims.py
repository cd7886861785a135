"""Verdict rules on synthetic run directories: each rule can hold, fail, or find nothing to measure."""

import json

import pytest
from helpers import DPO, SFT, make_run, paper_sft, squeeze_dpo

from ldyn.paper.claims import FAILS, HOLDS, NA, check_claims
from ldyn.runs.directory import load_run


def verdicts(runs, **kw):
    return {v.id: v for v in check_claims(runs, **kw)}


def test_sft_claims_hold_on_paper_like_curves(tmp_path):
    v = verdicts([make_run(tmp_path / "sft", [SFT], paper_sft())])
    assert [v[i].verdict for i in ("5", "6", "7", "8", "9")] == [HOLDS] * 5
    assert "up for 100% of prompts" in v["5"].measured and v["5"].runs == ("sft/sft",)
    assert v["10"].verdict == NA and v["17"].verdict == NA  # no DPO, no extend run


def test_sft_claims_fail_when_the_curves_say_otherwise(tmp_path):
    curves = paper_sft() | {
        "chosen": lambda s, e: -100 + (s if e < 2 else -s),  # up for half the prompts
        "irr_train": lambda s, e: -120 - s,
        "irr_hum": lambda s, e: -110 + s,
    }
    v = verdicts([make_run(tmp_path / "sft", [SFT], curves, a_norm=lambda s, e: 100 - s)])
    assert [v[i].verdict for i in ("5", "6", "8", "9")] == [FAILS] * 4


def test_dpo_squeeze_claims_hold_and_fail(tmp_path):
    v = verdicts([make_run(tmp_path / "dpo", [DPO], squeeze_dpo())])
    assert [v[i].verdict for i in ("10", "11", "12", "13", "14")] == [HOLDS] * 5
    rising = squeeze_dpo() | {"chosen": lambda s, e: -100 + s}  # chosen never falls
    v = verdicts([make_run(tmp_path / "dpo2", [DPO], rising)])
    assert v["11"].verdict == FAILS and v["13"].verdict == NA and "never falls" in v["13"].measured


def test_the_squeeze_signature_needs_a_fall_longer_than_the_stage_end_probe(tmp_path):
    """Claim 13 reads the argmax while y_u⁺ falls: a stage whose y_u⁺ rises to its last regular probe and dips at the
    end-of-stage probe one update later has not fallen (paper_cpu_500's DPO from the base: −0.02 nats in 4 updates)."""
    rising = squeeze_dpo() | {"chosen": lambda s, e: -100 + s - 2 * (s == 9)}  # up to step 8, dips at step 9
    run = make_run(tmp_path / "dpo", [DPO], rising, steps_per_stage=9, every=2)  # probes 0, 2, 4, 6, 8
    end = [json.loads(line) for line in (run.path / "probes.jsonl").read_text().splitlines() if '"step": 8' in line]
    with (run.path / "probes.jsonl").open("a") as f:
        for row in end:  # the end-of-stage probe at step 9, as the trainer writes it
            row = row | {"step": 9} | ({"logp_sum": rising["chosen"](9, 0)} if row["type"] == "chosen" else {})
            f.write(json.dumps(row) + "\n")
    v = verdicts([load_run(run.path)])
    assert v["13"].verdict == NA and "last probe interval" in v["13"].measured
    falls = squeeze_dpo() | {"chosen": lambda s, e: -100 + s - 3 * max(s - 6, 0)}  # falls over steps 6-8: measured
    assert verdicts([make_run(tmp_path / "dpo2", [DPO], falls, steps_per_stage=9, every=2)])["13"].verdict == HOLDS


def test_learning_rate_sweep_needs_two_rates_and_a_faster_collapse(tmp_path):
    runs = [
        make_run(
            tmp_path / f"lr{i}",
            [("dpo", {"loss": {"name": "dpo"}, "optim": {"lr": lr}})],
            {"chosen": lambda s, e, k=k: -100 - k * s},
        )
        for i, (lr, k) in enumerate([(1e-6, 0.5), (1e-5, 2)])
    ]
    assert verdicts(runs[:1])["16"].verdict == NA
    assert verdicts(runs)["16"].verdict == HOLDS
    runs.append(
        make_run(
            tmp_path / "lr2",
            [("dpo", {"loss": {"name": "dpo"}, "optim": {"lr": 1e-4}})],
            {"chosen": lambda s, e: -100 - s},
        )
    )  # the largest rate collapses slower: not monotone
    assert verdicts(runs)["16"].verdict == FAILS


def test_extend_claims_compare_the_two_pipelines(tmp_path):
    def pipeline(rej_sft, dpo_drop, argmax_rise):
        return {
            "chosen": lambda s, e: -100 + (2 * s if s <= 4 else 8 - dpo_drop * (s - 4)),
            "rejected": lambda s, e: -90 + (rej_sft * s if s <= 4 else 4 * rej_sft - 5 * (s - 4)),
            "irr_hum": lambda s, e: -110 - (0 if s <= 4 else dpo_drop * (s - 4)),
            "argmax": lambda s, e: -50 + argmax_rise * s,
        }

    base = make_run(tmp_path / "base", [SFT, DPO], pipeline(0.5, 3, 2))
    ext = make_run(tmp_path / "ext", [("sft", {"loss": {"name": "sft"}, "extend": True}), DPO], pipeline(2, 1, 1))
    v = verdicts([base, ext])
    assert v["17"].verdict == HOLDS and v["18"].verdict == HOLDS and v["15"].verdict == HOLDS
    v = verdicts(
        [
            make_run(tmp_path / "base2", [SFT, DPO], pipeline(0.5, 1, 1)),
            make_run(tmp_path / "ext2", [("sft", {"loss": {"name": "sft"}, "extend": True}), DPO], pipeline(0.5, 3, 2)),
        ]
    )
    assert v["17"].verdict == FAILS and v["18"].verdict == FAILS


def test_on_policy_is_compared_with_off_policy_at_a_common_step(tmp_path):
    off = make_run(tmp_path / "off", [DPO], squeeze_dpo(), steps_per_stage=8)
    gentle = {t: (lambda s, e, f=f: f(0, e) + 0.2 * (f(s, e) - f(0, e))) for t, f in squeeze_dpo().items()}
    on = make_run(
        tmp_path / "on",
        [("dpo", {"loss": {"name": "dpo"}, "sample": {"responses": "rejected", "source": "policy"}})],
        gentle,
    )
    v = verdicts([off, on])
    assert v["20"].verdict == HOLDS and "at step 4" in v["20"].measured
    assert v["20b"].verdict == NA and v["20c"].verdict == NA


def test_win_rate_verdict_needs_the_interval_above_one_half(tmp_path):
    base = make_run(tmp_path / "base", [SFT, DPO], paper_sft())
    ext = make_run(tmp_path / "ext", [("sft", {"loss": {"name": "sft"}, "extend": True}), DPO], paper_sft())

    def rate(wins_a, wins_b, low, high):
        return [
            {
                "a": "ext/dpo",
                "b": "base/dpo",
                "judge": "j",
                "wins_a": wins_a,
                "wins_b": wins_b,
                "ties": 0,
                "invalid": 0,
                "win_rate": wins_a / (wins_a + wins_b),
                "low": low,
                "high": high,
            }
        ]

    assert verdicts([base, ext], winrates=rate(30, 10, 0.6, 0.86))["19"].verdict == HOLDS
    assert verdicts([base, ext], winrates=rate(10, 30, 0.14, 0.4))["19"].verdict == FAILS
    assert verdicts([base, ext], winrates=rate(12, 10, 0.34, 0.73))["19"].verdict == NA
    assert verdicts([base, ext])["19"].verdict == NA
    biased = [
        {
            "a": "ext/dpo",
            "b": "base/dpo",
            "judge": "j",
            "wins_a": 0,
            "wins_b": 0,
            "ties": 32,
            "inconsistent": 32,
            "invalid": 0,
            "win_rate": None,
            "low": None,
            "high": None,
            "first_shown": 1.0,
        }
    ]
    v = verdicts([base, ext], winrates=biased)["19"]
    assert v.verdict == NA and "32 inconsistent" in v.measured and "first-shown response in 100%" in v.measured


@pytest.mark.parametrize(
    "signs, verdict",
    [
        ({"chosen": 1, "irr_train": 1, "random_permute": -1, "random_nonhum": -1}, HOLDS),
        ({"chosen": 1, "irr_train": -1, "random_permute": -1, "random_nonhum": -1}, FAILS),
    ],
)
def test_sign_delta_under_sft(tmp_path, signs, verdict):
    rows = [
        {
            "step": step,
            "stage": "sft",
            "example_id": "0",
            "type": t,
            "observed/sign_delta": s * 1e-6,
            "observed/lbk": 1.0 + k,
        }
        for step in (0, 1)
        for k, (t, s) in enumerate(signs.items())
    ]
    run = make_run(tmp_path / "app", [SFT], {"chosen": lambda s, e: -1.0}, decomposition=rows)
    v = verdicts([run])
    assert v["21b"].verdict == verdict
    assert v["21a"].verdict == HOLDS  # the same LBK order at both updates


def test_toy_claims_read_the_squeeze_results(tmp_path):
    from ldyn.toys import squeeze

    squeeze.run(tmp_path / "toy", n_check=50, seed=0)
    from ldyn.paper.claims import read_toys

    v = verdicts([], toys=read_toys([tmp_path / "toy"]))
    assert v["3"].verdict == HOLDS and v["4"].verdict == HOLDS and "0.763 → 0.987" in v["3"].measured
    assert verdicts([])["3"].verdict == NA
