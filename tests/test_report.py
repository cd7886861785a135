"""`ldyn report`: a self-contained HTML page over runs and suite folders, checked in headless Chromium."""

import shutil
import subprocess

import pytest
from helpers import DPO, SFT, make_run, paper_sft, squeeze_dpo

from ldyn import cli
from ldyn.runs.figures import plot_run

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


@pytest.fixture
def suite_folder(tmp_path):
    folder = tmp_path / "suite"
    base = make_run(folder / "base", [SFT, DPO], paper_sft())
    ext = make_run(folder / "ext", [("sft", {"loss": {"name": "sft"}, "extend": True}), DPO], paper_sft())
    off = make_run(folder / "off", [DPO], squeeze_dpo())
    for run in (base, ext, off):
        plot_run(run.path)
    (folder / "suite.jsonl").write_text('{"run": "base", "kind": "run", "seconds": 60}\n')
    return folder


def test_report_inlines_figures_and_checks_claims(suite_folder, tmp_path):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(suite_folder), "--out", str(out)]) == 0
    page = out.read_text()
    assert "src='data:image/png;base64," in page and "<img alt='Figure 5: baseline vs extend'" in page
    assert page.count("<tr><td>") >= 25 and "src='http" not in page and "href=" not in page  # self-contained
    verdicts = {v["id"]: v["verdict"] for v in __import__("json").loads(out.with_suffix(".json").read_text())}
    assert verdicts["5"] == "holds" and verdicts["11"] == "holds" and verdicts["19"] == "not measurable"


def test_report_on_something_that_is_not_a_run_fails_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no run directories" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not any(shutil.which(b) for b in BROWSERS), reason="no headless Chromium installed")
def test_report_renders_in_headless_chromium(suite_folder, tmp_path):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(suite_folder), "--out", str(out)]) == 0
    browser = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run([*flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert '<table id="claims">' in dom and dom.count('class="holds"') >= 5  # parsed and laid out as a table
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2000", out.as_uri()], capture_output=True, timeout=120
    )
    assert shot.stat().st_size > 50_000  # a rendered page with figures, not a blank one
