"""Shared fixtures: tiny models and tokenizers built in code; no network, ever."""

import os
import threading
from http.server import ThreadingHTTPServer

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental download fails loudly instead of flaking
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import FakeEndpoint, write_jsonl  # noqa: E402

from ldyn.models.pretrained import byte_tokenizer, prepare, tiny_model  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def tiny64(tokenizer):
    """A float64 tiny Llama for exact equivalence tests (sdpa: eager attention takes its softmax in float32)."""
    model, _ = prepare(tiny_model(tokenizer, torch.float64, "sdpa", seed=0), tokenizer)
    return model


@pytest.fixture
def pairs_file(tmp_path):
    rows = [
        {"prompt": f"\n\nHuman: question {i}?\n\nAssistant:", "chosen": f" good answer {i}", "rejected": f" bad {i}"}
        for i in range(6)
    ]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.fixture
def probe_file(tmp_path):
    rows = [
        {
            "prompt": f"\n\nHuman: q{i}\n\nAssistant:",
            "chosen": f" yes {i}",
            "rejected": f" no {i}",
            "irr_hum": " the bus was late",
            "random_permute": f" {i} yes",
        }
        for i in range(4)
    ]
    return write_jsonl(tmp_path / "probe.jsonl", rows)


@pytest.fixture
def endpoint():
    """An OpenAI-compatible endpoint on loopback (helpers.FakeEndpoint); its base URL."""
    FakeEndpoint.behaviour, FakeEndpoint.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
