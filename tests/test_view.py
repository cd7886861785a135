"""`ldyn.runs.view`: the interactive page over runs, checked as a file and in a real Chromium (Playwright)."""

import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from ldyn.paper.verdicts import HOLDS, NA, Verdict
from ldyn.runs.view import write_view

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")  # as test_report.py
SHOTS = Path("/tmp/view_shots")  # copies of the screenshots, to look at by eye
TYPES = [
    "chosen",
    "rejected",
    "chosen_gptsemantic",
    "reject_gptsemantic",
    "chosen_gptformat",
    "reject_gptformat",
    "irr_train",
    "irr_test",
    "irr_hum",
    "random_permute",
    "random_nonhum",
    "argmax",
    "except_argmax",
]
NASTY = "Say </script><b>bold</b> & 'quoted' \"twice\""


def synthetic_run(path, prompts=4, types=TYPES, rounds=6, decomposed=2, texts=True, name=None, slope=1.0):
    """A run directory of two stages (sft then dpo) probed `rounds` times, every 2 updates: prompt e's type k moves
    by a few nats a round; the first `decomposed` prompts have decomposition rows at every probed update."""
    path.mkdir(parents=True)
    steps = list(range(0, 2 * rounds, 2))
    half = steps[-1] // 2
    config = {
        "name": name or path.name,
        "model": {"name": "tiny"},
        "stages": [
            {"name": "sft", "steps": half, "batch_size": 2, "loss": {"name": "sft"}},
            {"name": "dpo", "steps": steps[-1] - half, "batch_size": 2, "loss": {"name": "dpo"}},
        ],
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    stage = lambda s: "sft" if s <= half else "dpo"
    ids = [f"p{e:03d}" for e in range(prompts)]
    metrics = [{"step": s, "stage": stage(s), "loss": 1.0} for s in range(1, steps[-1] + 1)]
    probes, dec = [], []
    for s in steps:
        for e, i in enumerate(ids):
            for k, t in enumerate(types):
                value = -100 - 10 * k - e + slope * math.sin(s / 3 + k + e) * (3 + k)
                probes.append({"step": s, "stage": stage(s), "example_id": i, "type": t, "logp_sum": value})
                if e < decomposed and s > 0 and t not in ("argmax", "except_argmax"):
                    obs = math.sin(s + k + e) / 10
                    row = {"observed": obs, "predicted": obs * 0.9 + 0.01, "sgd_positive": obs + 0.05}
                    row |= {"sgd_negative": -0.05, "observed/mass_argmax": 1e-4 * (k + 1)}
                    row |= {"observed/mass_topk": -4e-5, "observed/mass_tail": -6e-5 - 1e-4 * k}
                    dec.append({"step": s, "stage": stage(s), "example_id": i, "type": t, **row})
    rows = lambda xs: "".join(json.dumps(x) + "\n" for x in xs)
    (path / "metrics.jsonl").write_text(rows(metrics))
    (path / "probes.jsonl").write_text(rows(probes))
    (path / "decomposition.jsonl").write_text(rows(dec))
    if texts:
        probe_set = []
        for e, i in enumerate(ids):
            prompt = NASTY if e == 1 else f"user: question number {e} about topic {e % 7}? " + "context " * 20
            probe_set.append({"example_id": i, "type": "prompt", "text": prompt})
            for t in types[:-2]:
                probe_set.append({"example_id": i, "type": t, "text": f"{t} answer to {i}: " + "words " * 40})
        (path / "probe_set.jsonl").write_text(rows(probe_set))
    return path


def page_data(page: str) -> dict:
    block = re.search(r'<script id="ldyn-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    return json.loads(block)


# ---------------------------------------------------------------- the file


def test_page_inlines_plotly_and_every_prompt(tmp_path):
    run = synthetic_run(tmp_path / "a", prompts=6)
    out = write_view([run], findings=[{"title": "Squeezing", "text": "<i>argmax</i> up", "levers": ["lower lr"]}])
    assert out == run / "view.html"
    page = out.read_text()
    assert '<script src="http' not in page and "<script src=" not in page
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly's bundle is inlined
    data = page_data(page)
    assert data["runs"][0]["ids"] == [f"p{e:03d}" for e in range(6)]
    assert set(data["runs"][0]["types"]) == set(TYPES)
    assert data["runs"][0]["dsteps"] == [2, 4, 6, 8, 10] and "sgd_negative" in data["runs"][0]["dec"]
    # jinja2 escapes: the prompt cannot close the data block, a finding's markup is text
    assert "</script><b>" not in page and "&lt;i&gt;argmax&lt;/i&gt; up" in page
    assert data["runs"][0]["texts"]["prompt"][1] == NASTY
    assert 'id="diagnosis"' in page and "lower lr" in page


def test_diagnosis_and_claims_follow_what_is_given(tmp_path):
    run = synthetic_run(tmp_path / "a", texts=False)
    assert 'id="diagnosis"' not in write_view([run]).read_text()  # None: no box
    page = write_view([run], findings=[]).read_text()
    assert 'id="diagnosis"' in page and "Nothing notable." in page
    assert page_data(page)["runs"][0]["texts"] == {}  # no probe_set.jsonl: ids only
    unmeasured = Verdict("19", "Win rate", "DPO wins", "no judge", NA)
    page = write_view([run], claims=[unmeasured]).read_text()
    assert "<details><summary>Claims: none of the 1 is measurable" in page and '<table id="claims">' not in page
    held = {"id": "5", "title": "Squeeze", "paper": "y* up", "measured": "+3", "verdict": HOLDS, "runs": ["a"]}
    page = write_view([run], out=tmp_path / "v.html", claims=[held, unmeasured]).read_text()
    assert '<table id="claims">' in page and 'class="holds"' in page and '<table id="claims-unmeasured">' in page


def test_page_size_for_a_large_run(tmp_path):
    run = synthetic_run(tmp_path / "big", prompts=500, rounds=20, decomposed=16)
    start = time.perf_counter()
    out = write_view([run])
    seconds = time.perf_counter() - start
    print(f"500 prompts × 13 types × 20 rounds: {out.stat().st_size / 1e6:.1f} MB, written in {seconds:.1f} s")
    assert out.stat().st_size < 20_000_000


# ---------------------------------------------------------------- in a real browser


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip("no Chromium on the PATH (apt-get install -y chromium-headless-shell, as .ci/run does)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=found, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path, errors, width=1400):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.perf_counter()
    page.goto(Path(path).as_uri())
    page.wait_for_function("window.ldynView && window.ldynView.ready")
    return page, time.perf_counter() - start


def shoot(page, tmp_path, name, **kw):
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), **kw)
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(shot, SHOTS / shot.name)
    return shot


def trajectory_ys(page):
    return page.evaluate("document.getElementById('trajectory').data.map(t => t.y)")


def test_page_in_chromium(browser, tmp_path):
    run = synthetic_run(tmp_path / "a", prompts=5)
    out = write_view([run], findings=[{"title": "Squeezing", "text": "the argmax gains", "mechanism": "m"}])
    errors = []
    page, _ = open_page(browser, out, errors)
    assert page.input_value("#prompt-picker") == "p000"  # opens on the first probed prompt
    assert "question number 0" in page.text_content("#prompt-text")
    assert "chosen answer to p000" in page.text_content("#responses")
    assert page.evaluate("document.getElementById('scatter').data.length") > 0
    before = trajectory_ys(page)
    shoot(page, tmp_path, "overview")
    page.select_option("#prompt-picker", "p001")
    assert page.text_content("#prompt-text") == NASTY  # shown as text, not markup
    assert trajectory_ys(page) != before  # the trajectory chart redrew for the new prompt
    page.select_option("#prompt-picker", "p000")
    page.locator("#prompts").scroll_into_view_if_needed()
    shoot(page, tmp_path, "prompt", full_page=True)
    page.select_option("#prompt-picker", "p003")  # not decomposed: the panel hides
    assert page.locator("#decomposition").is_hidden() and page.locator("#no-decomposition").is_visible()
    page.fill("#prompt-filter", "topic 4")
    assert page.evaluate("[...document.getElementById('prompt-picker').options].map(o => o.value)") == ["p004"]
    assert errors == []


def test_two_runs_in_chromium(browser, tmp_path):
    a = synthetic_run(tmp_path / "a", prompts=3, name="sft_dpo")
    b = synthetic_run(tmp_path / "b", prompts=3, texts=False, name="ipo", slope=4.0)
    out = write_view([a, b], out=tmp_path / "two.html", findings=[])
    errors = []
    page, _ = open_page(browser, out, errors)
    assert page.evaluate("document.querySelectorAll('#overview-charts .js-plotly-plot').length") == 2
    assert "ipo: dpo" in page.text_content("#overview-table")
    before = trajectory_ys(page)
    page.select_option("#run-picker", "1")
    assert page.input_value("#prompt-picker") == "p000"  # the same prompt, in the other run
    assert "did not record its probed texts" in page.text_content("#prompt-text")
    assert trajectory_ys(page) != before
    page.check("#side-by-side")  # the prompt in the other run beside it
    assert page.evaluate("document.querySelectorAll('#others .js-plotly-plot').length") == 1
    shoot(page, tmp_path, "two_runs", full_page=True)
    assert errors == []


@pytest.mark.slow
def test_large_run_opens_quickly(browser, tmp_path):
    run = synthetic_run(tmp_path / "big", prompts=500, rounds=20, decomposed=16)
    out = write_view([run])
    errors = []
    page, seconds = open_page(browser, out, errors)
    start = time.perf_counter()
    page.select_option("#prompt-picker", "p250")
    switch = time.perf_counter() - start
    print(f"{out.stat().st_size / 1e6:.1f} MB page: open {seconds:.2f} s, switching prompt {switch * 1000:.0f} ms")
    shoot(page, tmp_path, "large")
    assert seconds < 15 and switch < 2 and errors == []


def test_the_page_reads_the_claims_reports_verdict_words():
    from ldyn.runs import view

    assert view.NOT_MEASURABLE == NA  # runs/ sits below paper/, so it keeps the word, not the import


def test_view_and_diagnose_commands_show_the_same_findings(tmp_path, capsys):
    from ldyn import cli
    from ldyn.runs.diagnose import diagnose, format_findings
    from ldyn.runs.directory import load_run

    run = synthetic_run(tmp_path / "a", slope=3.0)
    findings = diagnose(load_run(run))
    assert cli.main(["diagnose", str(run)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["a:", *(f"  {line}" for line in format_findings(findings))]
    out = tmp_path / "page.html"
    assert cli.main(["view", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert 'id="diagnosis"' in page or "Diagnosis" in page
    assert all(f.title in page for f in findings) and ("Nothing notable" in page or findings)


def test_two_runs_of_one_recipe_are_told_apart_in_the_diagnosis(tmp_path):
    """Runs whose configs share a name (two runs of one recipe): each finding is labelled by its folder."""
    from ldyn.paper.report import write_view_page
    from ldyn.runs.diagnose import diagnose
    from ldyn.runs.directory import load_run

    runs = [synthetic_run(tmp_path / f, name="smollm2_sft_dpo", slope=3.0) for f in ("lr1e-6", "lr5e-6")]
    assert diagnose(load_run(runs[0]))  # the synthetic curves give findings to label
    page = write_view_page(runs, out=tmp_path / "v.html").read_text()
    for folder in ("lr1e-6", "lr5e-6"):
        assert f"{folder}: " in page
    assert "smollm2_sft_dpo: " not in page
