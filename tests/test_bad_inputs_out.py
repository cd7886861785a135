"""Bad output paths and unreadable runs through the read-side commands (export, compare, influence, report, plot,
toy, winrate), table-driven as `test_bad_inputs.py`: exit 2, one `ldyn: error:` line naming the key or the file,
row and field, no traceback, nothing written (no half-written file, no folder made), the runs read left as they
were. The tests run as root, where a read-only folder is still writable: a place that cannot be written is a path
under a file (`afile/x.csv`) or in /proc. Then what must keep working: a missing output folder is made, a line cut
off by a kill is skipped, the format follows the name."""

import json
import shutil

import datasets
import pytest
from helpers import tiny
from test_bad_inputs import NEW, assert_refused

from ldyn import cli

RUNS = ("run", "started", "malformed", "rowless", "figfile")
WATCHED = (*RUNS, "user", "broken")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A finished run and copies of it: before its first probe round (`started`), with a malformed line in the
    middle of probes.jsonl (`malformed`), a row without its type (`rowless`), a file where figures/ goes
    (`figfile`); a folder of user files, a broken run, the working directory, a file."""
    root = tmp_path_factory.mktemp("out")
    assert cli.main(tiny(root / "run")) == 0
    (root / "user").mkdir()
    (root / "user" / "notes.txt").write_text("precious")
    (root / "user" / "table.csv").mkdir()  # where `compare --out user/table.png` would write its CSV
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("name: [unclosed\n")
    (root / "cwd").mkdir()
    (root / "afile").write_text("not a folder")
    lines = (root / "run" / "probes.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    del row["type"]
    copies = {
        "started": None,
        "malformed": [lines[0], '{"step": 0, "oops', *lines[1:]],
        "rowless": [lines[0], json.dumps(row), *lines[2:]],
        "figfile": lines,
    }
    for name, probes in copies.items():
        (root / name).mkdir()
        shutil.copy(root / "run" / "config.yaml", root / name)
        if probes is not None:
            (root / name / "probes.jsonl").write_text("\n".join(probes) + "\n")
    (root / "figfile" / "figures").write_text("a file where the figures go")
    return root


FIGURE = "must end in .png, .pdf, .svg"
CASES = {  # name: (arguments, given the root; what the error line must contain)
    "export under a file": (
        lambda r: ["export", str(r / "run"), "--out", str(r / "afile" / "x.csv")],
        "afile/x.csv: field '--out': cannot be written: ",
    ),
    "export into /proc": (lambda r: ["export", str(r / "run"), "--out", "/proc/x.csv"], "/proc/x.csv: field '--out'"),
    "export to a folder": (lambda r: ["export", str(r / "run"), "--out", str(r / "user")], "is a folder"),
    "export to an unknown suffix": (
        lambda r: ["export", str(r / "run"), "--out", "x.xlsx"],
        "x.xlsx: field '--out': must end in .parquet or .csv",
    ),
    "export to an unknown suffix in a new folder": (
        lambda r: ["export", str(r / "run"), "--out", str(r / NEW / "deeper" / "x.txt")],
        "must end in .parquet or .csv",
    ),
    "export format against the suffix": (
        lambda r: ["export", str(r / "run"), "--format", "csv", "--out", "x.parquet"],
        "is a .parquet name but --format is csv",
    ),
    "export of a run not probed yet": (lambda r: ["export", str(r / "started")], "holds no probe records yet"),
    "export of a malformed line": (lambda r: ["export", str(r / "malformed")], "probes.jsonl:2: malformed JSON"),
    "export of a row without its type": (
        lambda r: ["export", str(r / "rowless")],
        "rowless/probes.jsonl:2: field 'type': missing",
    ),
    "export of no run": (lambda r: ["export", str(r / "nothing")], "not a run directory"),
    "compare under a file": (
        lambda r: ["compare", str(r / "run"), "--out", str(r / "afile" / "c.png")],
        "afile is a file, not a folder",
    ),
    "compare into /proc": (lambda r: ["compare", str(r / "run"), "--out", "/proc/c.png"], "cannot be written"),
    "compare to a folder": (lambda r: ["compare", str(r / "run"), "--out", str(r / "user")], "is a folder"),
    "compare to an unknown suffix": (lambda r: ["compare", str(r / "run"), "--out", "c.jpgx"], FIGURE),
    "compare to its own CSV": (lambda r: ["compare", str(r / "run"), "--out", "c.csv"], FIGURE),
    "compare whose CSV is a folder": (
        lambda r: ["compare", str(r / "run"), "--out", str(r / "user" / "table.png")],
        "user/table.csv: field '--out': is a folder",
    ),
    "compare of a run not probed yet": (lambda r: ["compare", str(r / "started")], "none of these runs has probe"),
    "compare of a row without its type": (lambda r: ["compare", str(r / "rowless")], "field 'type': missing"),
    "influence under a file": (
        lambda r: ["influence", str(r / "run"), "--out", str(r / "afile" / "i.png")],
        "afile is a file, not a folder",
    ),
    "influence without decompositions": (
        lambda r: ["influence", str(r / "run")],
        "none of these runs has decomposition records",
    ),
    "report under a file": (
        lambda r: ["report", str(r / "run"), "--out", str(r / "afile" / "r.html")],
        "afile is a file, not a folder",
    ),
    "report into /proc": (lambda r: ["report", str(r / "run"), "--out", "/proc/r.html"], "cannot be written"),
    "report to a folder": (lambda r: ["report", str(r / "run"), "--out", str(r / "user")], "is a folder"),
    "report to an unknown suffix": (
        lambda r: ["report", str(r / "run"), "--out", "r.txt"],
        "field '--out': must end in .html or .htm",
    ),
    "report of a run not probed yet": (
        lambda r: ["report", str(r / "started")],
        "none of these runs has probe or decomposition records yet",
    ),
    "report to a new folder of a run not probed yet": (
        lambda r: ["report", str(r / "started"), "--out", str(r / NEW / "r.html")],
        "none of these runs has probe or decomposition records yet",
    ),
    "report of a malformed line": (lambda r: ["report", str(r / "malformed")], "probes.jsonl:2: malformed JSON"),
    "plot where figures/ is a file": (lambda r: ["plot", str(r / "figfile")], "figfile/figures: is a file"),
    "plot of a run not probed yet": (lambda r: ["plot", str(r / "started")], "has nothing to draw yet"),
    "plot of a row without its type": (lambda r: ["plot", str(r / "rowless")], "field 'type': missing"),
    "toy squeeze into a file": (
        lambda r: ["toy", "squeeze", "--out", str(r / "afile")],
        "field '--out': is a file, not a folder",
    ),
    "toy digits under a file": (lambda r: ["toy", "digits", "--out", str(r / "afile" / "d")], "afile is a file"),
    "winrate under a file": (
        lambda r: ["winrate", "tiny", "tiny", "--prompts", "p.jsonl", "--out", str(r / "afile" / "w")],
        "field '--out': cannot be written",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_output_or_run_is_refused_with_one_line_and_nothing_is_written(case, root, capsys, monkeypatch):
    monkeypatch.chdir(root / "cwd")
    make, expected = CASES[case]
    assert_refused(make(root), expected, root, capsys, watched=WATCHED)
    assert list((root / "cwd").iterdir()) == []  # no half-written file, no folder made
    assert sorted(p.name for p in root.iterdir()) == sorted([*WATCHED, "cwd", "afile", ".run.lock"])


def test_there_are_at_least_ten_cases():
    assert len(CASES) >= 10


def test_a_missing_output_folder_is_made_by_every_command(root, tmp_path, capsys):
    for command, name in (("compare", "c.png"), ("export", "p.parquet"), ("report", "r.html")):
        out = tmp_path / command / "new" / "folder" / name
        assert cli.main([command, str(root / "run"), "--out", str(out)]) == 0, capsys.readouterr().err
        assert out.is_file()
    assert (tmp_path / "compare" / "new" / "folder" / "c.csv").is_file()


def test_the_format_follows_the_name_and_a_line_cut_by_a_kill_is_skipped(root, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(root / "run", killed)
    whole = (killed / "probes.jsonl").read_text()
    (killed / "probes.jsonl").write_text(whole + whole.splitlines()[0][:30])  # a kill mid-line
    assert cli.main(["export", str(killed), "--out", str(tmp_path / "p.csv")]) == 0
    table = datasets.Dataset.from_csv(str(tmp_path / "p.csv"))
    assert len(table) == len(whole.splitlines())
