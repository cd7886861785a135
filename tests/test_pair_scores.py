"""`ldyn score-pairs`: every pair's own update, its predicted effect on its own chosen by the readout kernel."""

import csv
import json

import pytest
import torch
from helpers import UPDATE

from ldyn import cli
from ldyn.config import LossConfig
from ldyn.dynamics import readout
from ldyn.losses import get_loss
from ldyn.models.pretrained import prepare, tiny_model
from ldyn.train.pair_scores import ches, pair_score


def test_score_pairs_writes_every_pair_most_displaced_first(pairs_file, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert cli.main(["score-pairs", str(pairs_file), "model.name=tiny", "--out", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and [int(r["rank"]) for r in rows] == list(range(1, 7))
    scores = [float(r["self_chosen"]) for r in rows]
    assert scores == sorted(scores)  # the most displaced (most negative) first
    for r in rows:  # the DPO stage: the y⁺ part and the y⁻ part make the whole
        assert float(r["self_chosen"]) == pytest.approx(float(r["from_chosen"]) + float(r["from_rejected"]))
        assert float(r["from_rejected"]) != 0.0
    assert len(printed) == 1 + 3 + 1 and printed[-1].endswith(f"to {out}")
    assert rows[0]["example_id"] in printed[1]


def test_an_sft_stage_has_no_rejected_part(pairs_file, tmp_path):
    out = tmp_path / "scores.jsonl"
    args = ["score-pairs", str(pairs_file), "model.name=tiny", "--stage", "sft", "--out", str(out)]
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in out.open()]
    assert all(r["from_rejected"] == 0.0 and r["ches"] == 0.0 for r in rows)
    assert all(r["self_chosen"] > 0 for r in rows)  # SFT on a pair raises its own chosen, to first order


def test_an_unknown_stage_is_refused(pairs_file, tmp_path, capsys):
    assert cli.main(["score-pairs", str(pairs_file), "model.name=tiny", "--stage", "dpp"]) == 2
    assert "unknown stage 'dpp'" in capsys.readouterr().err


def test_pair_score_by_its_parts(tokenizer):
    """One pair's score is the readout's SGD-kernel change of its own chosen under its own update, and CHES is
    ⟨Σh⁺, Σh⁻⟩ − ‖Σh⁺‖² of the last hidden states."""
    model, _ = prepare(tiny_model(tokenizer, torch.float64, "sdpa", seed=1), tokenizer)
    spec, cfg, lr = get_loss("dpo"), LossConfig(), 1e-3
    head = model.get_output_embeddings().weight.detach()
    score = pair_score(model, spec, cfg, UPDATE[0], head, lr)
    update = readout.readout_update(model, spec, cfg, UPDATE[:1], 0, None)
    stats = readout.readout_statistics(update.sides[0], update, head, lr)
    assert score["self_chosen"] == pytest.approx(float(stats["predicted"][0]))
    plus = update.hidden[: len(UPDATE[0].chosen)].sum(0)
    minus = update.hidden[len(UPDATE[0].chosen) :].sum(0)
    assert ches(update) == pytest.approx(float(plus @ minus - plus @ plus))
    assert score["n_chosen"] == len(UPDATE[0].chosen)


def test_a_recipe_that_requires_a_probe_path_scores_without_one(pairs_file, tmp_path):
    out = tmp_path / "s.csv"
    args = ["score-pairs", str(pairs_file), "--recipe", "hh_probe_dpo", "model.name=tiny", "data.n_train=4"]
    assert cli.main([*args, "--out", str(out)]) == 0
    assert len(list(csv.DictReader(out.open()))) == 4
