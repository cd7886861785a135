"""`ldyn probes build` and `ldyn probes check`: a tiny local generator, a loopback endpoint with failures, resuming
from the cache, and `ldyn run` probing the built file."""

import json

from helpers import FakeEndpoint

from ldyn import cli
from ldyn.data.probesets import PAPER_TYPES, load_probe_set
from ldyn.generate.probe_build import ORDER, overlap


def build(capsys, out, *extra):
    settings = "--n 4 --generator-model tiny --initial-model tiny --max-new-tokens 12".split()
    code = cli.main(["probes", "build", "embedded", "--out", str(out), *settings, *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_build_writes_the_authors_format_reproducibly(tmp_path, capsys):
    rows = build(capsys, tmp_path / "a" / "p.jsonl")
    assert len(rows) == 4 and all(set(ORDER) <= set(r) for r in rows)
    examples, types = load_probe_set(str(tmp_path / "a" / "p.jsonl"))
    assert types == list(PAPER_TYPES) and len(examples) == 4
    for r in rows:
        assert sorted(r["random_permute"].split()) == sorted(r["chosen"].split())
        assert sorted(r["random_nonhum"].split()) == sorted(r["irr_test"].split())
        assert r["irr_train"] != r["chosen"] and r["irr_train"] in {x["chosen"] for x in rows}
        assert r["irr_test"] not in {x["chosen"] for x in rows}  # a held-out pair's answer
    again = build(capsys, tmp_path / "b" / "p.jsonl")
    rule = ("irr_train", "irr_test", "random_permute", "random_nonhum")
    assert [[r[t] for t in rule] for r in again] == [[r[t] for t in rule] for r in rows]  # seeded
    other_seed = build(capsys, tmp_path / "c" / "p.jsonl", "--seed", "1")
    assert [r["random_permute"] for r in other_seed] != [r["random_permute"] for r in rows]
    provenance = json.loads((tmp_path / "a" / "p.jsonl.provenance.json").read_text())["fields"]
    assert provenance["chosen_gptsemantic"]["generator"] == "local:tiny"
    assert "{chosen}" in provenance["chosen_gptsemantic"]["prompt"] and provenance["irr_test"]["generator"] == "rule"


def test_an_interrupted_build_continues_from_its_cache(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    first = build(capsys, out)
    cache = out.with_name("p.jsonl.cache.jsonl")
    lines = cache.read_text().splitlines()
    assert len(lines) == 4 * 6  # 4 rows × (4 rephrases/rewrites + irr_hum + chosen_initial)
    cache.write_text("\n".join(lines[:10]) + "\n")  # as if killed after 10 generations
    build(capsys, out)
    assert len(cache.read_text().splitlines()) == 24  # only the 14 missing were generated
    assert build(capsys, out) == build(capsys, out) and len(cache.read_text().splitlines()) == 24
    assert [r["chosen"] for r in first] == [r["chosen"] for r in build(capsys, out)]


def test_endpoint_generator_with_failures_then_recovery(endpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDYN_JUDGE_URL", endpoint)
    out = tmp_path / "p.jsonl"
    settings = "--n 3 --generator endpoint --generator-model gpt-test".split()
    args = ["probes", "build", "embedded", "--out", str(out), *settings, "--initial-model", ""]
    FakeEndpoint.behaviour = ["500", "500", "500", "null"] + [f"Rephrased response: text {i}" for i in range(30)]
    assert cli.main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    provenance = json.loads(out.with_name("p.jsonl.provenance.json").read_text())["fields"]
    assert provenance["chosen_gptsemantic"]["failed_rows"] == [rows[0]["id"]]  # 3 attempts, 3 × HTTP 500
    assert rows[0]["chosen_gptsemantic"] == "" and rows[1]["chosen_gptsemantic"].startswith("text ")
    assert "chosen_initial" not in rows[0]
    asked = len(FakeEndpoint.requests)
    FakeEndpoint.behaviour = []  # healthy: answers "More helpful: A"
    assert cli.main(args) == 0
    assert len(FakeEndpoint.requests) - asked == 1  # only the failed generation is asked again
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["chosen_gptsemantic"] == "More helpful: A"
    body = FakeEndpoint.requests[-1][2]
    assert body["model"] == "gpt-test" and "keeping exactly the same meaning" in body["messages"][1]["content"]


def test_check_reports_each_type_and_ldyn_run_probes_the_built_file(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    build(capsys, out)
    assert cli.main(["probes", "check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "random_permute" in printed and "overlap with source" in printed
    report = json.loads((tmp_path / "p.jsonl.check.json").read_text())
    assert report["random_permute"]["overlap_with_chosen"] == 1.0 and report["chosen"]["empty"] == 0
    assert report["chosen_gptsemantic"]["generator"] == "local:tiny"
    assert overlap("a b c", "c b a") == 1.0 and overlap("a b", "c d") == 0.0
    run = [
        "run",
        "smollm2_sft_dpo",
        "model.name=tiny",
        f"probe.path={out}",
        "probe.n=4",
        "probe.every=2",
        "stages.sft.steps=2",
        "stages.dpo.steps=2",
        "stages.*.batch_size=2",
        "data.n_train=4",
        f"output_dir={tmp_path / 'run'}",
    ]
    assert cli.main(run) == 0
    probes = [json.loads(line) for line in (tmp_path / "run" / "probes.jsonl").read_text().splitlines()]
    assert {p["type"] for p in probes} >= {"chosen_initial", "irr_hum", "random_nonhum"}


def test_bad_build_settings_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LDYN_JUDGE_URL", raising=False)
    cases = [
        (["--n", "0"], "field '--n': must be >= 1"),
        (["--n", "500"], "asks for more pairs than the data has"),
        (["--generator", "endpoint", "--n", "4"], "$LDYN_JUDGE_URL"),
    ]
    for extra, expected in cases:
        code = cli.main(["probes", "build", "embedded", "--out", str(tmp_path / "p.jsonl"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "p.jsonl").exists()


def test_an_ultrafeedback_file_builds_a_probe_set_that_the_long_suite_runs_on(tmp_path, capsys):
    """UltraFeedback-style pairs (a prompt, chosen and rejected conversations repeating the user's turn, scores)
    become a probe set in the authors' format; `paper_cpu_long_uf` is `paper_cpu_long` rendered as the paper renders
    UltraFeedback, and a run of its recipe with its settings probes the built file."""
    from dataclasses import replace
    from pathlib import Path

    from ldyn.paper.suite import configs, load_suite

    pairs = tmp_path / "uf_pairs.jsonl"
    with open(pairs, "w") as f:
        for i, topic in enumerate(["colour", "fruit", "river", "planet", "metal", "bird", "tree", "city"]):
            user = [{"role": "user", "content": f"Name a {topic} and say one thing about it."}]
            row = {"prompt": user[0]["content"], "prompt_id": f"uf{i}", "score_chosen": 8.0, "score_rejected": 3.0,
                   "chosen": user + [{"role": "assistant", "content": f"A {topic}: number {i}, well known."}],
                   "rejected": user + [{"role": "assistant", "content": f"I know no {topic}."}]}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    out = tmp_path / "uf_probes.jsonl"
    settings = "--n 4 --generator-model tiny --initial-model tiny --max-new-tokens 8".split()
    assert cli.main(["probes", "build", str(pairs), "--out", str(out), *settings]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(set(ORDER) <= set(r) for r in rows)
    assert rows[1]["prompt"] == [{"role": "user", "content": "Name a fruit and say one thing about it."}]
    assert rows[1]["chosen"] == "A fruit: number 1, well known." and rows[1]["rejected"] == "I know no fruit."
    data = [f"data.train={out}", f"probe.path={out}"]
    uf = configs(load_suite("paper_cpu_long_uf"), data, tmp_path / "uf")
    hh = configs(load_suite("paper_cpu_long"), data, tmp_path / "hh")
    assert uf.keys() == hh.keys()
    for name, cfg in uf.items():
        assert cfg.data.template == "Human: {prompt}\nAssistant:" and cfg.data.truncation_mode == "keep_start"
        same = replace(cfg, data=replace(cfg.data, template=hh[name].data.template, truncation_mode="keep_end"))
        assert replace(same, output_dir=hh[name].output_dir) == hh[name], name  # nothing else differs
    suite = load_suite("paper_cpu_long_uf")
    first = suite.runs[0]
    run = ["run", first.recipe, *first.common, *data, "model.name=tiny", "stages.*.steps=2", "stages.*.batch_size=2",
           "data.n_train=4", "probe.n=4", "probe.every=2", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    assert cli.main(run) == 0
    probes = [json.loads(line) for line in (tmp_path / "run" / "probes.jsonl").read_text().splitlines()]
    assert {p["type"] for p in probes} >= set(PAPER_TYPES) and {p["step"] for p in probes} == {0, 2, 4}
    assert Path(tmp_path / "run" / "figures" / "probe_groups.png").is_file()
