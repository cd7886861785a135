"""Win rate: verdict parsing, randomised A/B order, ties apart, the on-disk cache, and an OpenAI-compatible judge
served on loopback that times out, fails and answers nonsense."""

import json

import pytest
from helpers import FakeEndpoint

from ldyn import cli
from ldyn.generate.judges import EndpointJudge, parse_verdict
from ldyn.paper.winrate import compare, wilson


@pytest.mark.parametrize(
    "answer, verdict",
    [
        ("Comparison: A is kinder.\nMore helpful: A", "A"),
        ('Comparison: B lists steps.\nMore helpful: "B"', "B"),
        ("Comparison: same.\nMore helpful: B.", "B"),
        ("More helpful: Response A", "A"),
        ("Comparison: equally good.\nMore helpful: tie", "tie"),
        ("I cannot decide", None),
        ("More helpful: C", None),
        ("", None),
    ],
)
def test_parse_verdict_reads_the_text_after_the_last_colon(answer, verdict):
    assert parse_verdict(answer) == verdict


class PrefersGood:
    """A judge that prefers whichever response says "good", wherever it is shown; records what it saw."""

    id = "fake:good"

    def __init__(self):
        self.calls = []

    def prefer(self, prompt, a, b):
        self.calls.append((a, b))
        if "good" in a and "good" in b:
            return "tie"
        return "A" if "good" in a else "B"


def test_order_is_randomised_and_mapped_back_ties_apart_and_cached(tmp_path):
    prompts = [f"q{i}" for i in range(40)]
    a = [f"good {i}" for i in range(40)]
    b = [f"bad {i}" if i < 30 else f"good too {i}" for i in range(40)]
    judge = PrefersGood()
    result = compare(prompts, a, b, judge, tmp_path / "judgements.jsonl", seed=1, both_orders=False)
    assert (result.wins_a, result.wins_b, result.ties, result.invalid) == (30, 0, 10, 0)
    assert result.win_rate == 1.0 and result.low > 0.85
    shown_first = [x for x, _ in judge.calls]
    assert 5 < sum(s.startswith("bad") for s in shown_first) < 25  # A is not always shown first
    again = PrefersGood()
    assert compare(prompts, a, b, again, tmp_path / "judgements.jsonl", seed=1, both_orders=False) == result
    assert again.calls == []  # every judgement came from the cache


class AlwaysFirst:
    """A judge with complete position bias, like the 135M local judge: always "A"."""

    id = "fake:first"

    def prefer(self, prompt, a, b):
        return "A"


def test_both_orders_turn_position_bias_into_ties_and_keep_real_preferences(tmp_path):
    prompts = [f"q{i}" for i in range(20)]
    a, b = [f"good {i}" for i in range(20)], [f"bad {i}" for i in range(20)]
    biased = compare(prompts, a, b, AlwaysFirst(), tmp_path / "j.jsonl")
    assert (biased.wins_a, biased.wins_b, biased.ties, biased.inconsistent) == (0, 0, 20, 20)
    assert biased.win_rate is None and biased.first_shown == 1.0
    one_order = compare(prompts, a, b, AlwaysFirst(), tmp_path / "j.jsonl", both_orders=False)
    assert one_order.wins_a + one_order.wins_b == 20  # a coin-flip "result" that both orders refuse to give
    judge = PrefersGood()
    fair = compare(prompts, a, b, judge, tmp_path / "j.jsonl")
    assert (fair.wins_a, fair.wins_b, fair.ties, fair.inconsistent) == (20, 0, 0, 0)
    assert fair.first_shown == 0.5 and len(judge.calls) == 40
    assert {(x.startswith("good"), y.startswith("good")) for x, y in judge.calls} == {(True, False), (False, True)}


def test_long_responses_are_skipped_as_the_authors_do(tmp_path):
    result = compare(["q"], ["good " * 500], ["bad"], PrefersGood(), tmp_path / "j.jsonl")
    assert result.skipped == 1 and result.win_rate is None


def test_wilson_interval():
    low, high = wilson(30, 40)
    assert 0.59 < low < 0.75 < high < 0.87
    assert wilson(0, 0) == (None, None)


def test_endpoint_judge_retries_timeouts_errors_and_malformed_answers(endpoint):
    judge = EndpointJudge(endpoint, "sk-test", "judge-model", timeout=0.3, retries=5)
    FakeEndpoint.behaviour = ["sleep", "500", "garbage", "Comparison: hmm, unsure", "Comparison: x\nMore helpful: B"]
    assert judge.prefer("q", "a", "b") == "B"
    assert len(FakeEndpoint.requests) == 5
    assert [f.split(":")[0] for f in judge.failures] == [
        "TimeoutError",
        "HTTPError",
        "JSONDecodeError",
        "unparseable answer",
    ]
    path, auth, body = FakeEndpoint.requests[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "judge-model"
    assert body["messages"][0]["content"] == "You are a helpful assistant."
    assert "Response A:\na" in body["messages"][1]["content"]


def test_endpoint_judge_gives_up_after_its_retries_and_counts_invalid(endpoint, tmp_path):
    judge = EndpointJudge(endpoint, "", "m", timeout=1.0, retries=2)
    FakeEndpoint.behaviour = ["nonsense", "garbage"] + ["More helpful: A"] * 10
    result = compare(["q1", "q2", "q3"], ["x1", "x2", "x3"], ["y1", "y2", "y3"], judge, tmp_path / "j.jsonl")
    assert result.invalid == 1  # its first order got no answer; the other two prompts: "A" both times, a split
    assert (result.wins_a, result.wins_b, result.ties, result.inconsistent) == (0, 0, 2, 2)


def test_winrate_command_with_endpoint_judge_resumes_without_asking_again(
    endpoint, tmp_path, monkeypatch, probe_file, capsys
):
    monkeypatch.setenv("LDYN_JUDGE_URL", endpoint)
    monkeypatch.setenv("LDYN_JUDGE_KEY", "k")
    args = [
        "winrate",
        "tiny",
        "tiny",
        "--prompts",
        str(probe_file),
        "--n",
        "3",
        "--judge",
        "endpoint",
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "w"),
    ]
    assert cli.main(args) == 0
    first = len(FakeEndpoint.requests)
    assert first == 3  # the same checkpoint twice: identical responses, so both orders are one question
    result = json.loads((tmp_path / "w" / "winrate.json").read_text())[0]
    assert result["wins_a"] + result["wins_b"] + result["ties"] == 3
    assert cli.main(args) == 0
    assert len(FakeEndpoint.requests) == first  # responses and judgements came from the cache


def test_winrate_command_without_an_endpoint_url_fails_clearly(tmp_path, monkeypatch, probe_file, capsys):
    monkeypatch.delenv("LDYN_JUDGE_URL", raising=False)
    assert cli.main(["winrate", "tiny", "tiny", "--prompts", str(probe_file), "--judge", "endpoint"]) == 2
    assert "LDYN_JUDGE_URL" in capsys.readouterr().err


def test_local_judge_answers_a_letter_and_is_deterministic(tokenizer):
    import torch

    from ldyn.generate.judges import LocalJudge
    from ldyn.models.pretrained import prepare, tiny_model

    model, _ = prepare(tiny_model(tokenizer, torch.float32, "sdpa", seed=0), tokenizer)
    judge = LocalJudge(model, tokenizer, "tiny")
    first = judge.prefer("\n\nHuman: hi\n\nAssistant:", " hello there", " go away")
    assert (
        first in ("A", "B", "tie") and judge.prefer("\n\nHuman: hi\n\nAssistant:", " hello there", " go away") == first
    )
    assert judge.id == "local:tiny"
