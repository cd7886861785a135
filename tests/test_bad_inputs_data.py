"""Bad data through the CLI, table-driven as in test_bad_inputs.py: rows in TRL's formats (conversations checked
turn by turn), probe sets, and `ldyn probes build` / `check` (instructions, the generation cache, --out). Each
case exits 2 with one `ldyn: error:` line naming the file, line and field, and writes nothing."""

import json
import shutil

import pytest
from helpers import FakeEndpoint, tiny, write_jsonl
from test_bad_inputs import NEW, assert_refused

from ldyn import cli
from ldyn.generate.probe_build import check

U = {"role": "user", "content": "Name a colour."}
A = {"role": "assistant", "content": "Blue."}
NO = {"role": "assistant", "content": "No."}
PAIR = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
TINY = ["--n", "2", "--generator-model", "tiny", "--initial-model", "tiny", "--max-new-tokens", "4"]
CACHE = "p.jsonl.cache.jsonl"
DAMAGED = {  # name: what replaces the first line of a built probe set's cache (given that line)
    "text_number": lambda line: json.dumps(line | {"text": 3}),
    "text_list": lambda line: json.dumps(line | {"text": ["Blue."]}),
    "unknown_type": lambda line: json.dumps(line | {"field": "irr_train"}),
    "not_an_object": lambda line: "3",
}
WATCHED = ("run", "user", "broken", "data", "built", "caches")


def pairs(*rows, n=6):
    """The rows of a data file of `n` pairs: `rows`, then good pairs."""
    return [*rows, *({"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n))][:n]


@pytest.fixture(scope="module")
def data_workspace(tmp_path_factory):
    """A finished run, a folder of user files, data files with one bad row each, instructions files, a built probe
    set, and copies of it whose generation cache has one damaged line."""
    root = tmp_path_factory.mktemp("bad_data")
    assert cli.main(tiny(root / "run")) == 0
    for name in ("user", "broken", "cwd", "data", "caches"):
        (root / name).mkdir()
    (root / "user" / "notes.txt").write_text("precious")
    (root / "afile").write_text("not a folder")
    data = root / "data"
    rows = {
        "usr.jsonl": {"prompt": [{"role": "usr", "content": "hi"}], "chosen": [A], "rejected": [NO]},
        "turn.jsonl": {"prompt": ["Name a colour."], "chosen": [A], "rejected": [NO]},
        "content.jsonl": {"prompt": [{"role": "user", "content": 3}], "chosen": [A], "rejected": [NO]},
        "null_content.jsonl": {"messages": [{"role": "user", "content": None}, A], "rejected": [NO]},
        "parts.jsonl": {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, A],
            "rejected": [NO],
        },
        "norole.jsonl": {"prompt": [{"content": "hi"}], "chosen": [A], "rejected": [NO]},
        "string_messages.jsonl": {"messages": "Name a colour. Blue."},
        "implicit.jsonl": {
            "chosen": [{"role": "usr", "content": "q"}, A],
            "rejected": [{"role": "usr", "content": "q"}, NO],
        },
        "completion.jsonl": {"prompt": [U], "completion": [U]},
        "text_list.jsonl": {"text": [U, A], "rejected": " no"},
        "id.jsonl": PAIR | {"id": [1]},
    }
    for name, row in rows.items():
        write_jsonl(data / name, pairs(row))
    (data / "surrogate.jsonl").write_text('{"prompt": "Q\\ud83d", "chosen": " a", "rejected": " b"}\n' * 6)
    write_jsonl(data / "good.jsonl", pairs(n=8))
    (data / "empty.jsonl").write_text("\n")
    (data / "broken.jsonl").write_text(json.dumps(PAIR) + "\n{oops\n")
    write_jsonl(data / "prompts.jsonl", [{"prompt": f"Q{i}"} for i in range(8)])
    probe = [{"prompt": f"Q{i}", "chosen": " a", "rejected": " b"} for i in range(3)]
    write_jsonl(data / "irr_number.jsonl", [r | {"irr_hum": 3} for r in probe])
    write_jsonl(data / "irr_strings.jsonl", [r | {"irr_hum": ["a", "b"]} for r in probe])
    write_jsonl(data / "irr_role.jsonl", [r | {"irr_hum": [{"role": "usr", "content": "x"}]} for r in probe])
    write_jsonl(data / "twice.jsonl", [r | {"id": "same"} for r in probe])
    write_jsonl(data / "notmine.jsonl", probe)
    instructions = {
        "noplace.yaml": "chosen_gptsemantic: Please rephrase the response.\n",
        "unknown.yaml": "reject_gptformat: 'Rewrite {rejected} for {audience}.'\n",
        "braces.yaml": "chosen_gptformat: 'Rewrite {chosen} as {\"answer\": ...}'\n",
        "positional.yaml": "irr_hum: 'Write a sentence of {} words.'\n",
        "number.yaml": "chosen_gptsemantic: 3\n",
        "empty.yaml": "# nothing here\n",
        "typo.yaml": "irr_hum: 'A sentence of {words} words.'\nchosen_gptsemantc: 'Rephrase {chosen}'\n",
    }
    for name, text in instructions.items():
        (data / name).write_text(text)
    built = root / "built" / "p.jsonl"
    assert cli.main(["probes", "build", str(data / "good.jsonl"), "--out", str(built), *TINY]) == 0
    first, *rest = (built.parent / CACHE).read_text().splitlines()
    for name, damage in DAMAGED.items():
        shutil.copytree(built.parent, root / "caches" / name)
        (root / "caches" / name / CACHE).write_text("\n".join([damage(json.loads(first)), *rest]) + "\n")
    (root / "caches" / "provenance").mkdir()
    shutil.copy(built, root / "caches" / "provenance" / "p.jsonl")
    (root / "caches" / "provenance" / "p.jsonl.provenance.json").write_text('{"fields": [unclosed')
    return root


def run_on(data, *extra):
    return lambda r: tiny(r / NEW, f"data.train={r / 'data' / data}", *extra)


def probe_on(data, *extra):
    return lambda r: tiny(r / NEW, f"probe.path={r / 'data' / data}", *extra)


def build(*extra, data="good.jsonl", out=None):
    return lambda r: ["probes", "build", str(r / "data" / data), "--out", str(out(r) if out else r / NEW / "p"), *extra]


def cached(name):
    """Building again the probe set whose cache has the damaged line `name`."""
    return build(*TINY, out=lambda r: r / "caches" / name / "p.jsonl")


def check_of(path):
    return lambda r: ["probes", "check", str(r / path)]


CASES = {  # name: (arguments, given the workspace root; what the error line must contain)
    "unknown role": (
        run_on("usr.jsonl"),
        "usr.jsonl:1: field 'prompt': turn 1: unknown role 'usr' (did you mean 'user'?)",
    ),
    "a turn that is a string": (run_on("turn.jsonl"), "turn.jsonl:1: field 'prompt': turn 1 must be an object"),
    "numeric content": (run_on("content.jsonl"), "field 'prompt': turn 1 (user): 'content' must be a string, got num"),
    "null content": (run_on("null_content.jsonl"), "'content' must be a string, got null"),
    "content as parts": (run_on("parts.jsonl"), "'content' must be a string, got list"),
    "a turn without role": (run_on("norole.jsonl"), "norole.jsonl:1: field 'prompt': turn 1 has no 'role'"),
    "messages as a string": (run_on("string_messages.jsonl"), "field 'messages': must be a list of messages"),
    "implicit pair, unknown role": (run_on("implicit.jsonl"), "field 'chosen': turn 1: unknown role 'usr'"),
    "completion ending with a user turn": (run_on("completion.jsonl"), "field 'completion': has no assistant turn"),
    "text as messages": (run_on("text_list.jsonl"), "field 'text': must be a string (a conversation goes in"),
    "id that is a list": (run_on("id.jsonl"), "id.jsonl:1: field 'id': must be a string or an integer, got list"),
    "lone surrogate": (run_on("surrogate.jsonl"), "surrogate.jsonl:1: field 'prompt': has a lone surrogate"),
    "probe type that is a number": (probe_on("irr_number.jsonl"), "irr_number.jsonl:1: field 'irr_hum': probe type"),
    "named probe type that is a list": (
        probe_on("irr_strings.jsonl", "probe.types=[irr_hum]"),
        "irr_strings.jsonl:1: field 'irr_hum': probe type 'irr_hum' must be a string or a list of messages",
    ),
    "probe type with an unknown role": (probe_on("irr_role.jsonl"), "field 'irr_hum': turn 1: unknown role 'usr'"),
    "probe ids used twice": (probe_on("twice.jsonl"), "twice.jsonl:2: field 'id': 'same' is also the id of line 1"),
    "instruction without its placeholder": (
        build(*TINY, "--instructions", "r/data/noplace.yaml"),
        "noplace.yaml:1: field 'chosen_gptsemantic': the template has no {chosen} placeholder",
    ),
    "instruction with an unknown placeholder": (
        build(*TINY, "--instructions", "r/data/unknown.yaml"),
        "unknown.yaml:1: field 'reject_gptformat': unknown placeholder {audience}: the placeholders are {chosen}",
    ),
    "instruction with literal braces": (build(*TINY, "--instructions", "r/data/braces.yaml"), "unknown placeholder"),
    "instruction with {}": (build(*TINY, "--instructions", "r/data/positional.yaml"), "unknown placeholder {}"),
    "instruction that is a number": (
        build(*TINY, "--instructions", "r/data/number.yaml"),
        "number.yaml:1: field 'chosen_gptsemantic': must be a text with placeholders",
    ),
    "empty instructions": (build(*TINY, "--instructions", "r/data/empty.yaml"), "empty.yaml: has no instructions"),
    "misspelt instruction": (
        build(*TINY, "--instructions", "r/data/typo.yaml"),
        "typo.yaml:2: unknown field 'chosen_gptsemantc' (did you mean 'chosen_gptsemantic'?)",
    ),
    "cache text that is a number": (cached("text_number"), f"text_number/{CACHE}:1: 'text' must be a string or null"),
    "cache text that is a list": (cached("text_list"), "'text' must be a string or null, got list"),
    "cache line of another type": (cached("unknown_type"), "'field' 'irr_train' is not a generated type"),
    "cache line that is no object": (cached("not_an_object"), f"{CACHE}:1: expected a JSON object, got number"),
    "--out is a folder": (build(*TINY, out=lambda r: r / "user"), "user: field '--out': is a folder"),
    "--out under a file": (build(*TINY, out=lambda r: r / "afile" / "p.jsonl"), "afile is a file, not a folder"),
    "--out is the data": (build(*TINY, out=lambda r: r / "data" / "good.jsonl"), "field '--out': is the data file"),
    "--out is another file": (
        build(*TINY, out=lambda r: r / "data" / "notmine.jsonl"),
        "notmine.jsonl: field '--out': exists and was not written by `ldyn probes build`",
    ),
    "build from a missing file": (build(*TINY, data="nope.jsonl"), "nope.jsonl: cannot read: No such file"),
    "build from an empty file": (build(*TINY, data="empty.jsonl"), "empty.jsonl: no examples found"),
    "build from malformed JSON": (build(*TINY, data="broken.jsonl"), "broken.jsonl:2: malformed JSON"),
    "build from prompts without pairs": (
        build(*TINY, data="prompts.jsonl"),
        "prompts.jsonl:1: field 'chosen': missing: a preference pair has it",
    ),
    "--max-new-tokens 0": (build(*TINY, "--max-new-tokens", "0"), "field '--max-new-tokens': must be >= 1, got 0"),
    "--test-split of a file": (build(*TINY, "--test-split", "test"), "field '--test-split': a data file has no splits"),
    "--test-split is --split": (
        lambda r: ["probes", "build", "embedded", "--out", str(r / NEW / "p"), *TINY, "--test-split", "train"],
        "field '--test-split': is the probed split 'train'",
    ),
    "unloadable --initial-model": (
        build(*TINY, "--initial-model", "r/nothing"),
        "field '--initial-model': cannot load model",
    ),
    "check of a number": (check_of("data/irr_number.jsonl"), "irr_number.jsonl:1: field 'irr_hum': must be a string"),
    "check of a list": (check_of("data/irr_strings.jsonl"), "(2 more values in this file are not responses either)"),
    "check of an unknown role": (check_of("data/irr_role.jsonl"), "field 'irr_hum': turn 1: unknown role 'usr'"),
    "check with a damaged provenance": (check_of("caches/provenance/p.jsonl"), "p.jsonl.provenance.json: is damaged"),
}


def resolve(args, root):
    """`r/...` in an argument is a path under the workspace root."""
    return [str(root / a[2:]) if a.startswith("r/") else a for a in args]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_refused_with_one_line_and_nothing_changes(case, data_workspace, capsys, monkeypatch):
    monkeypatch.chdir(data_workspace / "cwd")
    make, expected = CASES[case]
    assert_refused(resolve(make(data_workspace), data_workspace), expected, data_workspace, capsys, watched=WATCHED)


def test_there_are_at_least_fifteen_cases():
    assert len(CASES) >= 15


# ---------------------------------------------------------------- what is no error


def test_check_reports_a_row_without_chosen_and_reads_conversations(tmp_path):
    rows = [{"prompt": [U], "chosen": [A], "rejected": " no"}, {"prompt": "Q", "rejected": " no", "chosen": ""}]
    report = check(write_jsonl(tmp_path / "p.jsonl", rows))
    assert report["chosen"]["empty"] == 1 and report["rejected"]["empty"] == 0


def test_a_cache_line_cut_by_a_kill_is_generated_again_and_cut_off(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    args = ["probes", "build", "embedded", "--out", str(out), *TINY]
    assert cli.main(args) == 0
    cache = tmp_path / CACHE
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])  # killed while writing the last line
    assert cli.main(args) == 0 and "cut short; generated again" in capsys.readouterr().err
    assert cli.main(args) == 0, capsys.readouterr().err  # the cut line is gone, not glued to the next one
    assert len(cache.read_text().splitlines()) == len(lines)


def test_an_answer_that_cleans_to_nothing_is_a_failure_asked_again(endpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDYN_JUDGE_URL", endpoint)
    out = tmp_path / "p.jsonl"
    args = ["probes", "build", "embedded", "--out", str(out), "--n", "2", "--generator", "endpoint"]
    FakeEndpoint.behaviour = ['""']  # only quotes: nothing once cleaned
    assert cli.main([*args, "--initial-model", ""]) == 0, capsys.readouterr().err
    provenance = json.loads((tmp_path / "p.jsonl.provenance.json").read_text())["fields"]
    assert len(provenance["chosen_gptsemantic"]["failed_rows"]) == 1
    asked = len(FakeEndpoint.requests)
    assert cli.main([*args, "--initial-model", ""]) == 0
    assert len(FakeEndpoint.requests) - asked == 1


def test_a_null_probe_response_is_left_out_like_an_empty_one(tmp_path):
    from ldyn.data.probesets import load_probe_set

    rows = [{"prompt": f"Q{i}", "chosen": " a", "rejected": " b", "irr_hum": None if i else " c"} for i in range(2)]
    examples, types = load_probe_set(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert types == ["chosen", "rejected", "irr_hum"] and "irr_hum" not in examples[1].responses
