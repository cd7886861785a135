"""Data as the Hugging Face ecosystem hands it over: TRL's formats (standard and conversational) and templates."""

import json
from dataclasses import replace

import pytest
from helpers import write_jsonl

from ldyn import cli
from ldyn.config import load_config
from ldyn.data.formats import example_from_row, load_examples
from ldyn.data.probesets import load_probe_set
from ldyn.data.templates import as_turns, render
from ldyn.data.tokenize import tokenize_examples
from ldyn.errors import LdynError
from ldyn.runtime.files import read_rows
from ldyn.train.experiment import load_inputs

U = [{"role": "user", "content": "Name a colour."}]
A_BLUE = [{"role": "assistant", "content": "Blue."}]
A_NO = [{"role": "assistant", "content": "No."}]

# Every TRL format, standard and conversational: row -> (prompt, responses) after loading.
FORMATS = {
    "language modelling": ({"text": "The sky is blue."}, "", {"chosen": "The sky is blue."}),
    "language modelling, conversational": ({"messages": U + A_BLUE}, U, {"chosen": A_BLUE}),
    "prompt-only": ({"prompt": "The sky is"}, "The sky is", {}),
    "prompt-only, conversational": ({"prompt": U}, U, {}),
    "prompt-completion": ({"prompt": "The sky is", "completion": " blue."}, "The sky is", {"chosen": " blue."}),
    "prompt-completion, conversational": ({"prompt": U, "completion": A_BLUE}, U, {"chosen": A_BLUE}),
    "preference": (
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        "The sky is",
        {"chosen": " blue.", "rejected": " green."},
    ),
    "preference, conversational": (
        {"prompt": U, "chosen": A_BLUE, "rejected": A_NO},
        U,
        {"chosen": A_BLUE, "rejected": A_NO},
    ),
    "implicit prompt": (
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        "The sky is",
        {"chosen": " blue.", "rejected": " green."},
    ),
    "implicit prompt, HH dialogue": (
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        "\n\nHuman: hi\n\nAssistant:",
        {"chosen": " hello", "rejected": " go away"},
    ),
    "implicit prompt, conversational": (
        {"chosen": U + A_BLUE, "rejected": U + A_NO},
        U,
        {"chosen": A_BLUE, "rejected": A_NO},
    ),
    "UltraFeedback (H4)": (
        {"prompt": "Name a colour.", "chosen": U + A_BLUE, "rejected": U + A_NO},
        U,
        {"chosen": A_BLUE, "rejected": A_NO},
    ),
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_trl_format_loads(name):
    row, prompt, responses = FORMATS[name]
    example = example_from_row(row, "f.jsonl", 1, "0")
    assert (example.prompt, example.responses) == (prompt, responses)


@pytest.mark.parametrize("source", ["jsonl", "save_to_disk"])
def test_conversational_files_and_dataset_folders_load(tmp_path, source):
    rows = [{"prompt": U, "chosen": A_BLUE, "rejected": A_NO}] * 3
    if source == "jsonl":
        path = write_jsonl(tmp_path / "conv.jsonl", rows)
    else:
        import datasets

        path = tmp_path / "conv"
        datasets.Dataset.from_list(rows).save_to_disk(path)
    examples, _ = load_examples(str(path), n=2, fields={"rejected": "needed"})
    assert len(examples) == 2 and examples[1].responses["rejected"] == A_NO


def test_unsupported_or_malformed_rows_name_their_field():
    with pytest.raises(LdynError, match="f:3: field 'label': unpaired preference"):
        example_from_row({"prompt": "x", "completion": "y", "label": True}, "f", 3, "0")
    with pytest.raises(LdynError, match="f:3: no prompt"):
        example_from_row({"question": "x"}, "f", 3, "0")
    with pytest.raises(LdynError, match="f:3: field 'messages': has no assistant turn"):
        example_from_row({"messages": U}, "f", 3, "0")
    with pytest.raises(LdynError, match="f:3: field 'chosen': must be a string or a list of messages"):
        example_from_row({"prompt": "x", "chosen": 3}, "f", 3, "0")


# ---------------------------------------------------------------- templates


def test_hh_template_writes_a_conversation_as_the_papers_dialogue(tokenizer):
    prompt = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
    ]
    example = example_from_row({"prompt": prompt, "chosen": A_BLUE}, "f", 1, "0")
    text, responses = render(tokenizer, "hh", example)
    assert text == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert responses == {"chosen": " Blue."}
    assert as_turns(text) == prompt  # and back


def test_chat_template_renders_as_the_tokenizer_does(tokenizer):
    example = example_from_row({"prompt": U, "chosen": A_BLUE, "rejected": A_NO}, "f", 1, "0")
    prompt, responses = render(tokenizer, "auto", example)  # auto: chat for conversational rows
    assert prompt == tokenizer.apply_chat_template(U, tokenize=False, add_generation_prompt=True)
    assert responses == {"chosen": "Blue.", "rejected": "No."}  # up to the end-of-turn; EOS is appended later
    row = tokenize_examples(tokenizer, [example], load_config("smollm2_sft_dpo").data)[0]
    whole = tokenizer.apply_chat_template(U + A_BLUE, tokenize=False).removesuffix("\n")
    assert row.prompt + row.responses["chosen"] == tokenizer(whole, add_special_tokens=False).input_ids


def test_chat_template_turns_hh_text_into_turns(tokenizer):
    example = example_from_row({"prompt": "\n\nHuman: Name a colour.\n\nAssistant:", "chosen": " Blue."}, "f", 1, "0")
    assert render(tokenizer, "chat", example) == render(
        tokenizer, "chat", example_from_row({"prompt": U, "chosen": A_BLUE}, "f", 1, "0")
    )
    assert render(tokenizer, "auto", example)[0] == example.prompt  # text rows keep the paper's format


def test_template_string_and_its_errors(tokenizer):
    example = example_from_row({"prompt": U, "chosen": A_BLUE}, "f", 1, "0")
    assert render(tokenizer, "Q: {prompt}\nA:", example) == ("Q: Name a colour.\nA:", {"chosen": "Blue."})
    two_turns = example_from_row({"prompt": U + A_BLUE + U, "chosen": A_NO}, "f", 7, "0")
    with pytest.raises(LdynError, match="f:7: field 'prompt': a template string takes one user turn"):
        render(tokenizer, "Q: {prompt}\nA:", two_turns)
    from ldyn.models.pretrained import byte_tokenizer

    plain = byte_tokenizer()
    plain.chat_template = None
    with pytest.raises(LdynError, match="has no chat template"):
        render(plain, "chat", example)
    with pytest.raises(LdynError, match="data.template"):
        load_config("smollm2_sft_dpo", ["data.template=chatml"])


def test_language_modelling_text_takes_its_first_token_as_the_prompt(tokenizer):
    example = example_from_row({"text": "abc"}, "f", 1, "0")
    row = tokenize_examples(tokenizer, [example], load_config("smollm2_sft_dpo").data)[0]
    ids = tokenizer("abc", add_special_tokens=False).input_ids
    assert row.prompt == ids[:1] and row.responses["chosen"] == ids[1:] + [tokenizer.eos_token_id]


# ---------------------------------------------------------------- what a run needs


def test_sft_needs_no_rejected_and_dpo_names_the_missing_field(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(4)])
    cfg = load_config("smollm2_sft_dpo", [f"data.train={path}", "model.name=tiny", "probe.every=0"])
    assert len(load_inputs(replace(cfg, stages=cfg.stages[:1]), tokenizer).train) == 4
    cfg = load_config("smollm2_sft_dpo", [f"data.train={path}", "model.name=tiny", "probe.every=0"])
    with pytest.raises(LdynError, match=r"sft.jsonl:1: field 'rejected': missing: stage 'dpo' \(DPO"):
        load_inputs(cfg, tokenizer)


def test_prompt_only_data_feeds_a_stage_that_samples_and_ranks_by_judge():
    cfg = load_config("smollm2_sft_dpo", ["stages.dpo.sample.responses=both", "stages.dpo.sample.rank=judge"])
    assert cfg.stages[1].needs() == {}
    cfg = load_config("smollm2_sft_dpo", ["stages.dpo.sample.responses=rejected"])
    assert list(cfg.stages[1].needs()) == ["chosen"]
    assert list(cfg.stages[0].needs()) == ["chosen"]  # SFT: its target only


def test_training_and_probing_see_the_same_tokens_for_a_conversational_file(tmp_path, tokenizer):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"question {i}?"}],
            "chosen": [{"role": "assistant", "content": f"answer {i}"}],
            "rejected": [{"role": "assistant", "content": f"no {i}"}],
        }
        for i in range(4)
    ]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    cfg = load_config("smollm2_sft_dpo", [f"data.train={path}", f"probe.path={path}", "model.name=tiny", "probe.n=4"])
    inputs = load_inputs(cfg, tokenizer)
    probes, _ = load_probe_set(str(path))
    assert [t for t in probes[0].responses] == ["chosen", "rejected"]
    for row in inputs.train:
        for item in (it for it in inputs.probes if it.example_id == row.id):
            assert (item.prompt, item.response) == (row.prompt, row.responses[item.type])
    assert tokenizer.decode(inputs.train[0].prompt).endswith("<|assistant|>\n")


def test_sft_on_prompt_completion_and_dpo_on_conversational_pairs_run_end_to_end(tmp_path, capsys):
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"Q{i}:", "completion": f" A{i}."} for i in range(4)])
    conv = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for i in range(4)
    ]
    conv = write_jsonl(tmp_path / "conv.jsonl", conv)
    common = ["model.name=tiny", "probe.n=2", "probe.every=1", "stages.*.batch_size=2"]
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("name: sft\nstages:\n  - {name: sft, steps: 2, loss: {name: sft}}\n")
    code = cli.main(
        ["run", str(recipe), f"data.train={sft}", f"probe.path={sft}", f"output_dir={tmp_path / 'sft'}", *common]
    )
    assert code == 0, capsys.readouterr().err
    chat = [f"data.train={conv}", f"probe.path={conv}", "data.template=chat", f"output_dir={tmp_path / 'dpo'}"]
    code = cli.main(["run", "smollm2_sft_dpo", *chat, "stages.sft.steps=1", "stages.dpo.steps=2", *common])
    assert code == 0, capsys.readouterr().err
    rows = read_rows(tmp_path / "dpo" / "probes.jsonl")
    assert {r["type"] for r in rows} >= {"chosen", "rejected", "argmax"} and max(r["step"] for r in rows) == 3
    assert json.loads((tmp_path / "sft" / "data.json").read_text())["train_pairs"] == 4
