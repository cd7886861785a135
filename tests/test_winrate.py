"""Win rate: verdict parsing, randomised A/B order, ties apart, the on-disk cache, and an OpenAI-compatible judge
served on loopback that times out, fails and answers nonsense."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ldyn import cli
from ldyn.winrate import EndpointJudge, compare, parse_verdict, wilson


@pytest.mark.parametrize("answer, verdict", [
    ("Comparison: A is kinder.\nMore helpful: A", "A"),
    ('Comparison: B lists steps.\nMore helpful: "B"', "B"),
    ("Comparison: same.\nMore helpful: B.", "B"),
    ("More helpful: Response A", "A"),
    ("Comparison: equally good.\nMore helpful: tie", "tie"),
    ("I cannot decide", None),
    ("More helpful: C", None),
    ("", None),
])
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
    result = compare(prompts, a, b, judge, tmp_path / "judgements.jsonl", seed=1)
    assert (result.wins_a, result.wins_b, result.ties, result.invalid) == (30, 0, 10, 0)
    assert result.win_rate == 1.0 and result.low > 0.85
    shown_first = [x for x, _ in judge.calls]
    assert 5 < sum(s.startswith("bad") for s in shown_first) < 25  # A is not always shown first
    again = PrefersGood()
    assert compare(prompts, a, b, again, tmp_path / "judgements.jsonl", seed=1) == result
    assert again.calls == []  # every judgement came from the cache


def test_long_responses_are_skipped_as_the_authors_do(tmp_path):
    result = compare(["q"], ["good " * 500], ["bad"], PrefersGood(), tmp_path / "j.jsonl")
    assert result.skipped == 1 and result.win_rate is None


def test_wilson_interval():
    low, high = wilson(30, 40)
    assert 0.59 < low < 0.75 < high < 0.87
    assert wilson(0, 0) == (None, None)


class FakeEndpoint(BaseHTTPRequestHandler):
    """/chat/completions: answers by the `behaviour` list in order (one entry per request), then 'A'."""

    behaviour: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        action = type(self).behaviour.pop(0) if type(self).behaviour else "More helpful: A"
        if action == "sleep":
            threading.Event().wait(1.0)
            action = "More helpful: A"
        if action == "500":
            self.send_response(500)
            self.end_headers()
            return
        payload = b"{not json" if action == "garbage" else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": action}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    FakeEndpoint.behaviour, FakeEndpoint.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_endpoint_judge_retries_timeouts_errors_and_malformed_answers(endpoint):
    judge = EndpointJudge(endpoint, "sk-test", "judge-model", timeout=0.3, retries=5)
    FakeEndpoint.behaviour = ["sleep", "500", "garbage", "Comparison: hmm, unsure", "Comparison: x\nMore helpful: B"]
    assert judge.prefer("q", "a", "b") == "B"
    assert len(FakeEndpoint.requests) == 5
    assert [f.split(":")[0] for f in judge.failures] == ["TimeoutError", "HTTPError", "JSONDecodeError",
                                                         "unparseable answer"]
    path, auth, body = FakeEndpoint.requests[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "judge-model"
    assert body["messages"][0]["content"] == "You are a helpful assistant."
    assert "Response A:\na" in body["messages"][1]["content"]


def test_endpoint_judge_gives_up_after_its_retries_and_counts_invalid(endpoint, tmp_path):
    judge = EndpointJudge(endpoint, "", "m", timeout=1.0, retries=2)
    FakeEndpoint.behaviour = ["nonsense", "garbage"] + ["More helpful: A"] * 10
    result = compare(["q1", "q2", "q3"], ["x1", "x2", "x3"], ["y1", "y2", "y3"], judge, tmp_path / "j.jsonl")
    assert result.invalid == 1 and result.wins_a + result.wins_b == 2


def test_winrate_command_with_endpoint_judge_resumes_without_asking_again(endpoint, tmp_path, monkeypatch,
                                                                          probe_file, capsys):
    monkeypatch.setenv("LDYN_JUDGE_URL", endpoint)
    monkeypatch.setenv("LDYN_JUDGE_KEY", "k")
    args = ["winrate", "tiny", "tiny", "--prompts", str(probe_file), "--n", "3", "--judge", "endpoint",
            "--max-new-tokens", "4", "--out", str(tmp_path / "w")]
    assert cli.main(args) == 0
    first = len(FakeEndpoint.requests)
    assert first == 3
    result = json.loads((tmp_path / "w" / "winrate.json").read_text())[0]
    assert result["wins_a"] + result["wins_b"] + result["ties"] == 3
    assert cli.main(args) == 0
    assert len(FakeEndpoint.requests) == first  # responses and judgements came from the cache


def test_winrate_command_without_an_endpoint_url_fails_clearly(tmp_path, monkeypatch, probe_file, capsys):
    monkeypatch.delenv("LDYN_JUDGE_URL", raising=False)
    assert cli.main(["winrate", "tiny", "tiny", "--prompts", str(probe_file), "--judge", "endpoint"]) == 2
    assert "LDYN_JUDGE_URL" in capsys.readouterr().err
