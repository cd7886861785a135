"""The seeded arithmetic task, its rewards, loading a user's reward by import path, and pass@k."""

import sys

import pytest

from ldyn.data.formats import example_from_row
from ldyn.errors import LdynError
from ldyn.generate.pass_at_k import estimate_pass_at_k, pass_at_k
from ldyn.rl.tasks import (
    UNRELATED,
    arithmetic_rows,
    evaluate,
    exact_number,
    final_number,
    first_number,
    load_reward,
    number_only,
    score,
)


def test_same_seed_same_rows_other_seed_other_rows():
    assert arithmetic_rows(20, seed=3) == arithmetic_rows(20, seed=3)
    assert arithmetic_rows(20, seed=3) != arithmetic_rows(20, seed=4)


def test_rows_are_consistent_and_follow_the_schema():
    rows = arithmetic_rows(50, seed=1, digits=2, operators=("+", "-", "*"))
    for row in rows:
        question = row["prompt"][0]["content"]
        assert question.startswith("What is ") and question.endswith("? Answer with the number only.")
        a, op, b = question.removeprefix("What is ").split("?")[0].split()
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert row["answer"] == evaluate([int(a), int(b)], [op]) >= 0
        assert row["chosen"] == str(row["answer"])
        assert row["chosen_gptsemantic"] == f"The answer is {row['answer']}."
        assert 1 <= abs(int(row["rejected"]) - row["answer"]) <= 2 and int(row["rejected"]) >= 0
        assert abs(int(row["rejected_far"]) - row["answer"]) == 10
        example = example_from_row(row, "arith", 1, row["id"])  # the project's reader takes the row as it is
        assert set(example.responses) == {
            "chosen",
            "rejected",
            "chosen_gptsemantic",
            "reject_gptsemantic",
            "rejected_far",
            "irr_train",
            "irr_hum",
        }
    answers = {r["chosen"] for r in rows}  # another question's result, never this one's; unrelated text
    assert all(r["irr_train"] in answers and r["irr_train"] != r["chosen"] for r in rows)
    assert all(r["irr_hum"] in UNRELATED for r in rows)
    assert "irr_train" not in arithmetic_rows(1)[0]  # no other question to take a result from


def test_evaluate_multiplies_first():
    assert evaluate([2, 3, 4], ["+", "*"]) == 14  # 2 + 3·4
    assert evaluate([9, 2, 3], ["-", "+"]) == 10
    assert evaluate([2, 3, 4], ["*", "-"]) == 2


def test_text_prompts_and_knob_errors():
    row = arithmetic_rows(1, conversational=False)[0]
    assert isinstance(row["prompt"], str) and row["prompt"].startswith("What is ")
    with pytest.raises(LdynError, match="operators"):
        arithmetic_rows(1, operators=("/",))


def test_exact_number_by_hand():
    completions = ["12", "The answer is 12.", "13", "no idea", "12 + 0 = 12", "-3", "1,024"]
    answers = [12, 12, 12, 12, 12, -3, 1024]
    assert exact_number([""] * 7, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert first_number("x = 2.5, y = 3") == 2.5
    assert first_number("none") is None


def test_final_number_reads_the_last_number():
    completions = ["7 + 5 = 12", "12, not 13", "The answer is 12.", "none"]
    assert final_number([""] * 4, completions, answer=[12] * 4) == [1.0, 0.0, 1.0, 0.0]


def test_number_only_is_a_format_reward():
    assert number_only([""] * 4, ["12", " 12.\n", "The answer is 12.", "12 apples"]) == [1.0, 1.0, 0.0, 0.0]


def test_score_passes_row_fields_as_lists():
    rows = arithmetic_rows(2, seed=0)
    completions = [rows[0]["chosen"], rows[1]["rejected"]]
    assert score(exact_number, ["p", "q"], completions, rows) == [1.0, 0.0]


def test_a_reward_loads_by_name_or_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions, **row_fields):\n"
        "    return [float(len(c)) for c in completions]\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward("my_rewards:length")
    assert score(fn, ["p", "q"], ["ab", "abcd"], [{"answer": 1}, {"answer": 2}]) == [2.0, 4.0]
    assert load_reward("exact_number") is exact_number
    for spec, message in [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("my_rewards:missing", "has no 'missing'"),
        ("my_rewards:NOT_CALLABLE", "is not callable"),
        ("my_rewards:", "package.module:function"),
        ("exact_numbr", "did you mean 'exact_number'"),
    ]:
        with pytest.raises(LdynError, match=message) as e:
            load_reward(spec)
        assert spec in str(e.value)
    sys.modules.pop("my_rewards", None)


def test_score_refuses_bad_rewards():
    rows = [{"answer": 1}]
    with pytest.raises(LdynError, match="returned 2 rewards for 1"):
        score(lambda p, c, **k: [1.0, 0.0], ["p"], ["c"], rows)
    with pytest.raises(LdynError, match="list of numbers"):
        score(lambda p, c, **k: ["x"], ["p"], ["c"], rows)
    with pytest.raises(LdynError, match="cannot be called"):
        score(exact_number, ["p"], ["c"], [{"no_answer": 1}])


# ---------------------------------------------------------------- pass@k


def test_pass_at_k_estimator_by_hand():
    assert estimate_pass_at_k(8, 2, 1) == pytest.approx(0.25)  # c/n
    assert estimate_pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert estimate_pass_at_k(8, 2, 8) == 1.0  # n - c < k: every draw of 8 holds a pass
    assert estimate_pass_at_k(8, 0, 8) == 0.0
    assert estimate_pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)


def test_pass_at_k_on_the_tiny_model(tiny64, tokenizer):
    rows = arithmetic_rows(3, seed=0)
    out = pass_at_k(tiny64, tokenizer, rows, exact_number, k_values=(1, 2, 4), n=4, max_new_tokens=4, batch_size=5)
    assert set(out.pass_at) == {1, 2, 4} and len(out.correct) == 3 and out.n == 4
    assert [len(c) for c in out.completions] == [4, 4, 4]
    assert all(0 <= c <= 4 for c in out.correct)
    assert 0 <= out.pass_at[1] <= out.pass_at[2] <= out.pass_at[4] <= 1
    assert out.pass_at[1] == pytest.approx(sum(out.correct) / 12)
    always = pass_at_k(
        tiny64, tokenizer, rows, lambda p, c, **k: [1.0] * len(c), k_values=(1, 4), n=4, max_new_tokens=2
    )
    assert always.pass_at == {1: 1.0, 4: 1.0} and always.mean_reward == 1.0
    with pytest.raises(ValueError):
        pass_at_k(tiny64, tokenizer, rows, exact_number, k_values=(8,), n=4)
