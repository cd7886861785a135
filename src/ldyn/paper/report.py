"""`ldyn report RUN_DIR...`: one self-contained HTML page (figures inlined) with the paper's claims checked.

Arguments are run directories or folders of runs (a suite's), whose toy results (`toy_squeeze/squeeze.json`),
win rates (`winrate/winrate.json`) and wall times (`suite.jsonl`) are read too. The page has: a summary of the
verdicts, the claims table (`claims.py`: the paper's statement, our numbers, the verdict), the win rates, the
cross-run figures (Figure 5's baseline vs extend, on- vs off-policy, the learning-rate sweep, the Appendix C
heatmap, the squeezing toy), every run's probe figure, and what was run with how long it took.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ldyn import __version__
from ldyn.errors import LdynError
from ldyn.paper.claims import FAILS, HOLDS, NA, Verdict, check_claims, read_toys
from ldyn.paper.stages import (
    dpo_after,
    dpo_from_base,
    extend_sft,
    on_policy_dpo,
    ranked_dpo,
    richest,
    sft_on_chosen,
    spin,
    stages_where,
)
from ldyn.paper.trajectories import Peak, csv_rows, summarise, trajectories
from ldyn.runs.compare import run_labels
from ldyn.runs.directory import CONFIG, SUITE_LOG, Run
from ldyn.runs.export import load_records
from ldyn.runs.figures import save_rows
from ldyn.runtime.files import read_rows, writable_file, write_atomically

PAGE_SUFFIXES = (".html", ".htm")


@dataclass
class Collected:
    runs: list[Run] = field(default_factory=list)
    toy_dirs: list[Path] = field(default_factory=list)
    winrates: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)


def collect(paths: list[str | Path]) -> Collected:
    """Runs, toys, win rates and timings under the given paths (a run directory or a folder of them)."""
    c = Collected()
    for path in map(Path, paths):
        if (path / CONFIG).is_file():
            c.runs.append(load_records(path))
            continue
        if not path.is_dir():
            raise LdynError("not a run directory or a folder of runs", file=str(path))
        found = False
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            if (sub / CONFIG).is_file():
                c.runs.append(load_records(sub))
                found = True
            elif (sub / "squeeze.json").is_file():
                c.toy_dirs.append(sub)
                found = True
        if (path / "winrate" / "winrate.json").is_file():
            c.winrates += _read_json(path / "winrate" / "winrate.json")
        if (path / SUITE_LOG).is_file():
            c.timings += read_rows(path / SUITE_LOG)
        if not found:
            raise LdynError("holds no run directories (nothing with a config.yaml)", file=str(path))
    return c


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LdynError(f"cannot read: {e}", file=str(path)) from None


# ---------------------------------------------------------------- figures


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _file_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def figures(c: Collected) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) of every cross-run figure these runs allow, then each run's probe figure."""
    out = [fig for make in (_figure5, _on_policy, _lr_sweep, _influence) if (fig := make(c.runs)) is not None]
    for toy in c.toy_dirs:
        if (toy / "squeeze.png").is_file():
            caption = "One update of a linear softmax head (the authors' notebook cases)."
            out.append(("The squeezing toy", caption, _file_png(toy / "squeeze.png")))
    for run, name in zip(c.runs, run_labels(c.runs)):
        png = run.path / "figures" / "probe_groups.png"
        if png.is_file() and run.probes:
            out.append((f"Run {name}", run.config.describe(), _file_png(png)))
    return out


def _figure5(runs: list[Run]):
    from ldyn.paper.figures import plot_extend_vs_baseline

    base = richest(stages_where(runs, dpo_after(sft_on_chosen)))
    ext = richest(stages_where(runs, dpo_after(extend_sft)))
    if not (base and ext):
        return None
    caption = (
        "Mean log-probability over the probed prompts; the dashed line is the SFT/DPO boundary. Extend trains "
        "SFT on chosen ∪ rejected for the same number of updates."
    )
    return "Figure 5: baseline vs extend", caption, _png(plot_extend_vs_baseline(base.run, ext.run))


def _on_policy(runs: list[Run]):
    from ldyn.paper.figures import plot_run_comparison

    off = richest(stages_where(runs, dpo_from_base))
    kinds = (
        ("on-policy (y⁻ sampled)", on_policy_dpo),
        ("on-policy (both sampled, ranked)", ranked_dpo),
        ("SPIN", spin),
    )
    policy = [(label, s.run) for label, test in kinds if (s := richest(stages_where(runs, test))) is not None]
    if not (off and policy):
        return None
    caption = (
        "Change since step 0, mean over probed prompts ('all other': the mean over every probed type except "
        "chosen and rejected)."
    )
    fig = plot_run_comparison([("off-policy DPO", off.run), *policy], "off-policy vs on-policy DPO from the base model")
    return "On-policy vs off-policy DPO", caption, _png(fig)


def _lr_sweep(runs: list[Run]):
    from ldyn.paper.figures import plot_run_comparison

    by_lr = {}
    for s in stages_where(runs, dpo_from_base):
        by_lr.setdefault(float(s.config.optim.lr), s.run)
    if len(by_lr) < 2:
        return None
    sweep = [(f"lr {lr:g}", run) for lr, run in sorted(by_lr.items())]
    caption = "Change since step 0 (the side runs of the sweep probe chosen and rejected only)."
    return "DPO learning-rate sweep", caption, _png(plot_run_comparison(sweep, "off-policy DPO, by learning rate"))


def _influence(runs: list[Run]):
    from ldyn.runs.compare import plot_influence

    decomposed = [r for r in runs if r.decomposition]
    if not decomposed:
        return None
    caption = (
        "Rows: observed response types; columns: training signals. Numbers: Σ over decomposed updates of the "
        "mean observed Δ log π (nats)."
    )
    return "Appendix C: accumulated influence", caption, _png(plot_influence(decomposed)[0])


# ---------------------------------------------------------------- the page

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.4; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.holds { background: #d9f2d9; font-weight: 600; }
.fails { background: #f8d7d7; font-weight: 600; }
.na { background: #eee; color: #555; }
figure { margin: 2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
code { background: #f5f5f5; padding: 1px 4px; }
"""
CLASS = {HOLDS: "holds", FAILS: "fails", NA: "na"}


def render(c: Collected, verdicts: list[Verdict], figs: list[tuple[str, str, str]], peaks: list[Peak] = ()) -> str:
    e = html.escape
    counts = {v: sum(x.verdict == v for x in verdicts) for v in (HOLDS, FAILS, NA)}
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>ldyn claims report</title>"
        f"<style>{CSS}</style></head><body>",
        "<h1>Which findings of <i>Learning Dynamics of LLM Finetuning</i> hold on these runs?</h1>",
        f"<p id='summary'><b>{counts[HOLDS]}</b> claims hold, <b>{counts[FAILS]}</b> do not hold, "
        f"<b>{counts[NA]}</b> are not measurable from these {len(c.runs)} runs. ldyn {e(__version__)}.</p>",
        _claims_table(verdicts),
        "<p>Changes are means over the probed prompts of the teacher-forced summed log-probability, from a stage's "
        "first probe to its last; each rule is in <code>ldyn/paper/claims_*.py</code> and written in the row.</p>",
        _trajectory_table(peaks),
        _winrate_table(c.winrates),
        "<h2>Figures</h2>",
        *(
            f"<figure><h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{png}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>"
            for title, caption, png in figs
        ),
        "<h2>Runs</h2><table id='runs'><tr><th>run</th><th>what it trains</th></tr>"
        + "".join(
            f"<tr><td>{e(name)}</td><td>{e(r.config.describe())}</td></tr>"
            for r, name in zip(c.runs, run_labels(c.runs))
        )
        + "</table>",
        _timing_table(c.timings),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _claims_table(verdicts: list[Verdict]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(v.id)}</td><td><b>{e(v.title)}</b><br>{e(v.paper)}</td><td>{e(v.measured)}"
        f"{'<br><small>' + e(', '.join(v.runs)) + '</small>' if v.runs else ''}</td>"
        f"<td class='{CLASS[v.verdict]}'>{e(v.verdict)}</td></tr>"
        for v in verdicts
    )
    return (
        "<h2>Claims (paper.md §7)</h2><table id='claims'><tr><th>#</th><th>the paper</th><th>measured here</th>"
        f"<th>verdict</th></tr>{rows}</table>"
    )


def _trajectory_table(peaks: list[Peak]) -> str:
    """The rise-then-fall curves: the mean's peak and fall, what the prompts did, and every prompt in a fold."""
    if not peaks:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(s.mean.claims)}</td><td>{e(s.mean.stage)}</td><td>{e(s.mean.response)}</td>"
        f"<td>{s.mean.start:.1f} → {s.mean.peak:.1f} (step {s.mean.peak_step}) → {s.mean.end:.1f} (step "
        f"{s.mean.end_step})</td><td>{s.mean.rise:+.1f}</td><td>{-s.mean.fall:+.1f}</td><td>{s.mean.net:+.1f}</td>"
        f"<td>{s.peaked_before_end:.0%}</td><td>{s.median_peak_step:g}</td><td>{-s.median_fall:+.1f}</td>"
        f"<td>{s.ended_below_start:.0%}</td></tr>"
        for s in summarise(peaks)
    )
    each = "".join(
        f"<tr><td>{e(p.stage)}</td><td>{e(p.response)}</td><td>{e(p.prompt)}</td><td>{p.start:.1f}</td>"
        f"<td>{p.peak:.1f}</td><td>{p.peak_step}</td><td>{p.end:.1f}</td><td>{p.rise:+.1f}</td><td>{-p.fall:+.1f}</td>"
        f"<td>{p.net:+.1f}</td></tr>"
        for p in peaks
        if p.prompt != "mean"
    )
    return (
        "<h2>Trajectories: where the curves peak</h2><p>The curves behind the rise-then-fall claims, from the "
        "stage's first probe through its highest to its last (log-probability summed over the response). "
        "<i>After the peak</i> is the change from the peak to the last probe (0: still rising at the end); "
        "the prompt columns take each prompt's own curve. Data: <code>trajectories.csv</code>.</p>"
        "<table id='trajectories'><tr><th>claims</th><th>stage</th><th>response</th><th>mean: start → peak → end"
        "</th><th>rise to peak</th><th>after the peak</th><th>net</th><th>prompts peaking before the end</th>"
        "<th>median peak step</th><th>median after own peak</th><th>prompts ending below start</th></tr>"
        f"{rows}</table><details><summary>Every prompt</summary><table id='trajectory-prompts'><tr><th>stage"
        "</th><th>response</th><th>prompt</th><th>start</th><th>peak</th><th>peak step</th><th>end</th>"
        f"<th>rise</th><th>after the peak</th><th>net</th></tr>{each}</table></details>"
    )


def _winrate_table(winrates: list[dict]) -> str:
    if not winrates:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['a'])}</td><td>{e(r['b'])}</td><td>{e(r['judge'])}</td><td>{r['wins_a']}</td><td>{r['wins_b']}"
        f"</td><td>{r['ties']} ({r.get('inconsistent', 0)})</td><td>{r['invalid']}</td><td>{r['skipped']}</td><td>"
        + ("n/a" if r["win_rate"] is None else f"{r['win_rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]")
        + "</td><td>"
        + ("n/a" if r.get("first_shown") is None else f"{r['first_shown']:.0%}")
        + "</td></tr>"
        for r in winrates
    )
    return (
        "<h2>Win rates</h2><table id='winrate'><tr><th>A</th><th>B</th><th>judge</th><th>wins A</th>"
        "<th>wins B</th><th>ties (inconsistent)</th><th>invalid</th><th>skipped</th>"
        f"<th>win rate of A [95%]</th><th>first-shown preferred</th></tr>{rows}</table>"
    )


def _timing_table(timings: list[dict]) -> str:
    if not timings:
        return ""
    total = sum(t.get("seconds", 0) for t in timings)
    rows = "".join(f"<tr><td>{html.escape(t['run'])}</td><td>{t['seconds'] / 60:.1f} min</td></tr>" for t in timings)
    return (
        f"<h2>Wall time</h2><table id='timing'><tr><th>step</th><th>time</th></tr>{rows}"
        f"<tr><th>total</th><th>{total / 60:.1f} min</th></tr></table>"
    )


def write_report(paths: list[str | Path], out: str | Path) -> Path:
    """Check the claims on the runs under `paths` and write the HTML page to `out`, the verdicts as JSON and the
    trajectories as CSV beside it; returns its path."""
    out = writable_file(out, "--out", PAGE_SUFFIXES)
    beside = [writable_file(out.with_suffix(".json"), "--out"), writable_file(out.with_name("trajectories.csv"))]
    c = collect(paths)
    if not c.runs:
        raise LdynError("no runs to report on")
    if not any(run.probes or run.decomposition for run in c.runs):
        raise LdynError("none of these runs has probe or decomposition records yet: nothing to check the claims on")
    verdicts = check_claims(c.runs, read_toys(c.toy_dirs), c.winrates)
    peaks = trajectories(c.runs)
    write_atomically(out, render(c, verdicts, figures(c), peaks), "--out")
    if peaks:  # the trajectory table's data, every prompt's curve with the mean's
        save_rows(csv_rows(peaks), beside[1])
    write_atomically(beside[0], json.dumps([vars(v) for v in verdicts], indent=1, ensure_ascii=False))
    return out


def write_view_page(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """`ldyn view`: the interactive page (`runs/view.py`) over the runs under `paths` (run directories or suite
    folders), with each run's diagnosis and the claims table; returns its path."""
    from ldyn.runs.diagnose import diagnose
    from ldyn.runs.view import write_view

    c = collect(paths)
    if not c.runs:
        raise LdynError("no runs to view")
    several = len(c.runs) > 1
    findings = [
        {**vars(f), "title": f"{name}: {f.title}" if several else f.title}
        for run, name in zip(c.runs, run_labels(c.runs))
        for f in diagnose(run)
    ]
    verdicts = check_claims(c.runs, read_toys(c.toy_dirs), c.winrates)
    return write_view([run.path for run in c.runs], out, findings=findings, claims=verdicts)
