"""Every run keeps its probed texts (probe_set.jsonl), from ldyn's trainer and from the TRL callback alike, and
`ldyn export --table probes|decomposition|metrics` writes each row file as one table with them."""

import json

import datasets
import pytest
from datasets import Dataset
from helpers import tiny
from trl import DPOConfig, DPOTrainer

from ldyn import cli
from ldyn.data.embedded import embedded_rows
from ldyn.data.probesets import as_text, probe_set_rows
from ldyn.integrations import LearningDynamicsCallback
from ldyn.integrations.trainer_data import probe_rows
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model
from ldyn.runs.directory import PROBE_SET, RunDir, load_run
from ldyn.runs.export import COLUMNS, TEXTS, export

PAIRS = [{"prompt": f"Question {i}?", "chosen": f" a good answer {i}", "rejected": f" bad {i}"} for i in range(6)]
SGD_SPLIT = ["sgd_positive", "sgd_negative"]
ARGS = dict(per_device_train_batch_size=2, learning_rate=1e-3, seed=0, bf16=False, use_cpu=True, report_to="none")


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory):
    out = tmp_path_factory.mktemp("texts") / "run"
    assert cli.main(tiny(out, "decompose.every=3", "decompose.n=1")) == 0  # updates 1 (SFT) and 4 (DPO)
    return out


def texts(run_dir) -> dict:
    return {(r["example_id"], r["type"]): r["text"] for r in RunDir(run_dir).read(PROBE_SET)}


def test_a_run_keeps_the_prompt_and_every_probed_types_text(decomposed):
    kept = texts(decomposed)
    probes = RunDir(decomposed).read("probes.jsonl")
    probed = {(r["example_id"], r["type"]) for r in probes if r["type"] not in ("argmax", "except_argmax")}
    assert set(kept) == probed | {(e, "prompt") for e, _ in probed}
    source = {row["id"]: row for _, row in embedded_rows(seed=0)}  # the probe file, its derived types with it
    assert {e for e, _ in kept} == set(list(source)[:2])
    for (example, kind), text in kept.items():
        assert text == source[example][kind]
    assert load_run(decomposed).texts == kept


def test_a_conversation_is_its_turns_role_and_content():
    from ldyn.data.formats import Example

    e = Example("a", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}], {})
    e = Example(e.id, e.prompt, {"chosen": [{"role": "assistant", "content": "Hello."}], "argmax": "x"})
    rows = probe_set_rows([e], ["chosen", "argmax"])
    assert rows == [
        {"example_id": "a", "type": "prompt", "text": "system: Be brief.\nuser: Hi?"},
        {"example_id": "a", "type": "chosen", "text": "assistant: Hello."},
    ]


def test_the_callback_keeps_the_texts_of_the_trainers_data_and_the_derived_types(tokenizer, tmp_path):
    model, tokenizer = prepare(tiny_model(tokenizer, seed=0), tokenizer)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, save_strategy="no", beta=0.1, **ARGS)
    callback = LearningDynamicsCallback(every=1, n=3, figures=False)
    trainer = DPOTrainer(
        model=model,
        ref_model=frozen_copy(model),
        args=args,
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    kept = texts(tmp_path / "ldyn")
    probes = RunDir(tmp_path / "ldyn").read("probes.jsonl")
    probed = {(r["example_id"], r["type"]) for r in probes if r["type"] not in ("argmax", "except_argmax")}
    assert set(kept) == probed | {(e, "prompt") for e, _ in probed}
    assert {t for _, t in kept} >= {"prompt", "chosen", "rejected", "irr_train", "random_permute"}
    rows, _ = probe_rows(trainer.train_dataset, None, 3, 0, 0, tokenizer.eos_token)  # what the callback probes
    assert kept == {(r["id"], k): as_text(v) for r in rows for k, v in r.items() if k != "id"}
    # TRL appended "<eos>" to the prepared responses; the probe ends each with the EOS token itself, so it is off
    assert kept[("train/0", "prompt")] == "Question 0?" and kept[("train/0", "chosen")] == " a good answer 0"
    assert trainer.train_dataset[0]["chosen"] == " a good answer 0" + tokenizer.eos_token


def test_each_table_exports_with_its_columns_and_the_texts(decomposed):
    kept = texts(decomposed)
    probes = datasets.Dataset.from_parquet(str(export(decomposed)))
    assert list(probes.features) == list(COLUMNS)
    assert len(probes) == len(RunDir(decomposed).read("probes.jsonl"))
    for row in probes:
        assert row["prompt"] == kept[(row["example_id"], "prompt")]
        assert row["response"] == kept.get((row["example_id"], row["type"]))  # None for the argmax types

    path = export(decomposed, table="decomposition")
    assert path == decomposed / "export" / "decomposition.parquet"
    table = datasets.Dataset.from_parquet(str(path))
    columns = list(table.features)
    assert columns[:8] == ["step", "stage", "example_id", "type", "observed", "predicted", *SGD_SPLIT]
    assert columns[-2:] == list(TEXTS) and "observed/mass_argmax" in columns
    assert len(table) == len(RunDir(decomposed).read("decomposition.jsonl"))
    for row in table:
        example = row["example_id"]
        assert (row["prompt"], row["response"]) == (kept[(example, "prompt")], kept[(example, row["type"])])

    assert cli.main(["export", str(decomposed), "--table", "metrics", "--format", "csv"]) == 0
    metrics = datasets.Dataset.from_csv(str(decomposed / "export" / "metrics.csv"))
    rows = RunDir(decomposed).read("metrics.jsonl")
    assert len(metrics) == len(rows) and list(metrics.features)[:2] == ["step", "stage"]
    assert {"loss", "grad_norm", "examples"} <= set(metrics.features)
    assert json.loads(metrics[0]["examples"]) == rows[0]["examples"]
    assert len(datasets.Dataset.from_parquet(str(export(decomposed, table="metrics")))) == len(rows)


def test_a_run_without_texts_exports_none(decomposed, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(decomposed, old, ignore=shutil.ignore_patterns("export", "checkpoints"))
    (old / PROBE_SET).unlink()
    table = datasets.Dataset.from_parquet(str(export(old)))
    assert set(table["prompt"]) == {None} and set(table["response"]) == {None}


def test_a_bad_table_is_one_line(decomposed, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(decomposed), "--table", "samples"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("ldyn: error: ") and err.count("\n") == 1, err
    assert "invalid choice: 'samples'" in err
