"""Data loading: the embedded set, the authors' probe format, HF formats, tokenisation and truncation."""

from pathlib import Path

import pytest

from ldyn.data.embedded import embedded_path, embedded_rows
from ldyn.data.formats import example_from_row, split_hh
from ldyn.data.preference import load_pairs
from ldyn.data.probesets import PAPER_TYPES, load_probe_set
from ldyn.data.templates import render
from ldyn.data.tokenize import IGNORE, collate, tokenize_rows
from ldyn.errors import LdynError

SHARED_PROBES = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh" / "probe_train.jsonl"


def test_embedded_set_has_48_training_pairs_and_a_held_out_split():
    assert len(load_pairs("embedded")[0]) == 48
    assert len(load_pairs("embedded", split="test")[0]) == 16


def test_embedded_probe_set_has_every_written_and_derived_type():
    examples, types = load_probe_set("embedded")
    assert len(examples) == 48
    assert set(types) == set(PAPER_TYPES) - {"chosen_initial"}
    assert all(e.responses[t].strip() for e in examples for t in types)


def test_derived_types_follow_their_rules_and_are_seeded():
    rows = [r for _, r in embedded_rows(seed=0)]
    test_chosen = {r["chosen"] for r in load_rows_split("test")}
    train_chosen = [r["chosen"] for r in rows]
    for r in rows:
        assert r["irr_train"] != r["chosen"] and r["irr_train"] in train_chosen  # another training prompt's
        assert r["irr_test"] in test_chosen  # a held-out prompt's
        assert sorted(r["random_permute"].split()) == sorted(r["chosen"].split())  # a word shuffle of chosen
        assert sorted(r["random_nonhum"].split()) == sorted(r["irr_test"].split())  # a word shuffle of irr_test
        assert r["random_permute"] != r["chosen"]
    assert [r for _, r in embedded_rows(seed=0)] == rows  # reproducible
    assert [r["random_permute"] for _, r in embedded_rows(seed=1)] != [r["random_permute"] for r in rows]


def load_rows_split(split):
    from ldyn.data.jsonl import read_jsonl

    return [r for _, r in read_jsonl(embedded_path()) if r["split"] == split]


@pytest.mark.skipif(not SHARED_PROBES.is_file(), reason="../shared/data/hh/probe_train.jsonl not present")
def test_authors_probe_file_loads_as_is():
    examples, types = load_probe_set(str(SHARED_PROBES), ["auto"], n=0)
    assert len(examples) == 500
    assert types == list(PAPER_TYPES)  # all 12 probed types, chosen_selfr excluded
    # the file has 21 empty chosen_initial and one empty rejected (line 248): left out of those prompts' types
    assert sum(len(types) - len(e.responses) for e in examples) == 22
    assert "rejected" not in examples[247].responses
    pairs, skipped = load_pairs(str(SHARED_PROBES), n=10)
    assert pairs[0].prompt.endswith("\n\nAssistant:") and pairs[0].chosen.startswith(" ")
    with pytest.raises(LdynError, match="probe_train.jsonl:248: field 'rejected': is empty"):
        load_pairs(str(SHARED_PROBES))
    pairs, skipped = load_pairs(str(SHARED_PROBES), skip_empty=True)
    assert (len(pairs), skipped) == (499, 1)


def test_named_probe_types_must_exist(probe_file):
    with pytest.raises(LdynError) as e:
        load_probe_set(str(probe_file), ["rejected", "irr_test"])
    assert str(e.value).startswith(f"{probe_file}:1: field 'irr_test': probe type 'irr_test' is not in this file")


def test_hh_dialogues_split_at_the_last_assistant_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    assert split_hh(text, {}) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:", " like this")
    pair = example_from_row({"chosen": text, "rejected": text.replace("like this", "no")}, "f", 1, "0")
    assert (pair.responses["chosen"], pair.responses["rejected"]) == (" like this", " no")


def test_ultrafeedback_rows_as_the_paper_formats_them(tokenizer):
    row = {
        "prompt": "Name a colour.",
        "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "No."}],
    }
    example = example_from_row(row, "f", 1, "0")
    prompt, responses = render(tokenizer, "Human: {prompt}\nAssistant:", example)
    assert (prompt, responses) == ("Human: Name a colour.\nAssistant:", {"chosen": "Blue.", "rejected": "No."})


def test_saved_hf_dataset_directory_loads(tmp_path):
    import datasets

    text = "\n\nHuman: hi\n\nAssistant:{}"
    ds = datasets.Dataset.from_dict({"chosen": [text.format(" yes")] * 3, "rejected": [text.format(" no")] * 3})
    ds.save_to_disk(tmp_path / "hh")
    pairs, _ = load_pairs(str(tmp_path / "hh"), n=2)
    assert len(pairs) == 2 and pairs[0].chosen == " yes"


def test_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(LdynError, match="cannot load Hugging Face dataset"):
        load_pairs("Anthropic/hh-rlhf")


def test_eos_is_appended_and_long_rows_are_truncated_like_the_papers_code(tokenizer):
    rows = [
        ("short", "abc", {"chosen": "de", "rejected": "f"}),
        ("long", "0123456789", {"chosen": "abcdefgh", "rejected": "xy"}),
    ]
    short, long = tokenize_rows(tokenizer, rows, max_length=12, max_prompt_length=4)
    eos = tokenizer.eos_token_id
    assert not short.truncated and short.responses["chosen"][-1] == eos and len(short.prompt) == 3
    # 10 + 9 > 12: the prompt keeps its last 4 tokens; 4 + 9 > 12: every response is cut to 12 - 4 = 8 tokens
    assert long.truncated and tokenizer.decode(long.prompt) == "6789"
    assert len(long.responses["chosen"]) == 8 and eos not in long.responses["chosen"]
    assert long.responses["rejected"][-1] == eos  # short enough to keep its EOS
    (keep_start,) = tokenize_rows(tokenizer, rows[1:], 12, 4, mode="keep_start")
    assert tokenizer.decode(keep_start.prompt) == "0123"


def test_collate_masks_prompt_and_padding():
    batch = collate([([1, 2], [3]), ([4], [5, 6, 7])], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.labels.tolist() == [[IGNORE, IGNORE, 3, IGNORE], [IGNORE, 5, 6, 7]]
