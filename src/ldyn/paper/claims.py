"""The paper's claims (`paper.md` §7) as verdict rules over run directories: `check_claims(runs) -> [Verdict]`.

Each rule finds the runs that can speak to its claim from their configs (an SFT stage on chosen, an off-policy DPO
stage from the base model, an extend stage, a sampling stage, decomposition records, a toy or win-rate result),
measures the claim's quantities from the files, and returns one of three verdicts:

- "holds"           every condition of the rule is met;
- "does not hold"   a condition fails (the measured numbers say which);
- "not measurable"  the runs lack what the claim needs (a run of that kind, a response type, a second learning rate).

Changes are means over the probed prompts of the teacher-forced summed log-probability, from a stage's first probe
(the step it starts at) to its last. The rules were fixed before looking at any result and are kept as written when
a claim fails at our scale: the point of the report is to say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldyn.runs import Run, probe_table, stage_spans
from ldyn.winrate import summary

HOLDS, FAILS, NA = "holds", "does not hold", "not measurable"
RANDOM_TYPES = ("random_permute", "random_nonhum")
NOT_RESPONSES = ("argmax", "except_argmax")  # measured along chosen, not response types of their own
NO_TOY = "no toy_squeeze results among these runs"


@dataclass
class Verdict:
    id: str
    title: str
    paper: str  # the paper's statement, condensed from paper.md §7
    measured: str  # our numbers
    verdict: str  # HOLDS | FAILS | NA
    runs: tuple[str, ...] = ()


# ---------------------------------------------------------------- measuring a stage


class Stage:
    """One stage of a run, with its probe tables restricted to the steps the stage spans."""

    def __init__(self, run: Run, name: str | None):
        """`name=None`: the whole run, from step 0 to its last update (with its first stage's config)."""
        stages = run.config.get("stages", [])
        self.run, self.name = run, name or "all"
        self.config = next((s for s in stages if s.get("name") == name), stages[0] if stages else {})
        spans = {n: (a, b) for a, b, n in stage_spans(run)}
        self.start, self.end = spans.get(name, (0, 0)) if name else (0, max((b for a, b in spans.values()), default=0))
        self.tables = {k: probe_table(run, k) for k in ("logp_sum", "a_norm")}

    @property
    def label(self) -> str:
        return f"{self.run.path.name}/{self.name}"

    def has(self, t: str, key: str = "logp_sum") -> bool:
        return len(self.steps(t, key)) >= 2

    def steps(self, t: str, key: str = "logp_sum") -> np.ndarray:
        if t not in self.tables[key]:
            return np.array([], dtype=int)
        steps = self.tables[key][t][0]
        return steps[(steps >= self.start) & (steps <= self.end)]

    def values(self, t: str, key: str = "logp_sum", until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps (S,), per-prompt values (S, E)) within the stage, up to step `until`."""
        steps, _, values = self.tables[key][t]
        keep = (steps >= self.start) & (steps <= (self.end if until is None else min(until, self.end)))
        return steps[keep], values[keep]

    def means(self, t: str, key: str = "logp_sum", until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        steps, values = self.values(t, key, until)
        return steps, np.nanmean(values, axis=1)

    def delta(self, t: str, key: str = "logp_sum", until: int | None = None, since: int | None = None) -> float:
        """Mean change over prompts from the stage start (or step `since`) to its end (or step `until`)."""
        steps, values = self.values(t, key, until)
        first = 0 if since is None else int(np.searchsorted(steps, since))
        return float(np.nanmean(values[-1] - values[first]))

    def share(self, t: str, up: bool, until: int | None = None) -> float:
        """Share of prompts whose log-prob went up (or down) from the stage start to its end."""
        _, values = self.values(t, until=until)
        d = values[-1] - values[0]
        d = d[~np.isnan(d)]
        return float(np.mean(d > 0 if up else d < 0))

    def types(self) -> list[str]:
        return [t for t in self.tables["logp_sum"] if t not in NOT_RESPONSES and self.has(t)]

    def others_delta(self, until: int | None = None, exclude=("chosen", "rejected")) -> float:
        """Mean over response types (other than `exclude`) of each type's mean change: "all other responses"."""
        return float(np.mean([self.delta(t, until=until) for t in self.types() if t not in exclude]))


def _loss(s: dict) -> str:
    return s.get("loss", {}).get("name", "")


def _sampled(s: dict) -> str:
    return s.get("sample", {}).get("responses", "none")


def stages_where(runs: list[Run], test: Callable[[Run, int, dict], bool], probed: bool = True) -> list[Stage]:
    """Every stage (of any run) that passes `test(run, index, stage config)` and has probe records."""
    found = []
    for run in runs:
        for i, s in enumerate(run.config.get("stages", [])):
            if test(run, i, s):
                stage = Stage(run, s["name"])
                if not probed or stage.has("chosen"):
                    found.append(stage)
    return found


def sft_on_chosen(run: Run, i: int, s: dict) -> bool:
    return _loss(s) == "sft" and s.get("target", "chosen") == "chosen" and not s.get("extend")


def extend_sft(run: Run, i: int, s: dict) -> bool:
    return _loss(s) == "sft" and bool(s.get("extend"))


def off_policy_dpo(run: Run, i: int, s: dict) -> bool:
    return _loss(s) == "dpo" and _sampled(s) == "none"


def dpo_from_base(run: Run, i: int, s: dict) -> bool:
    return i == 0 and off_policy_dpo(run, i, s)


def dpo_after(kind: Callable) -> Callable:
    def test(run: Run, i: int, s: dict) -> bool:
        stages = run.config.get("stages", [])
        return i == 1 and off_policy_dpo(run, i, s) and kind(run, 0, stages[0])

    return test


def _first(stages: list[Stage]) -> Stage | None:
    """The stage probing the most response types (the sweep's side runs probe fewer); ties: the first."""
    return max(stages, key=lambda s: len(s.types()), default=None)


def _v(ok: bool) -> str:
    return HOLDS if ok else FAILS


def _f(x: float) -> str:
    return f"{x:+.1f}"


# ---------------------------------------------------------------- the claims

CLAIMS: list[tuple[str, str, str, Callable]] = []


def claim(id_: str, title: str, paper: str):
    def register(fn):
        CLAIMS.append((id_, title, paper, fn))
        return fn

    return register


@claim(
    "1",
    "Prop. 1 (first order)",
    "For one small SGD step, the measured Δ log π matches −η·A·K·G from explicit "
    "Jacobians, with a relative error that halves when η halves.",
)
def _prop1(runs, toys, winrates):
    return (
        None,
        "checked by the test suite (tests/test_akg.py: JVP path = explicit K to 1e-8 in float64; the "
        "relative residual shrinks linearly with η), not from runs",
        NA,
    )


@claim("2", "‖A‖_F identity", "‖I − 1πᵀ‖_F² = V − 2 + V‖π‖², exactly.")
def _a_norm(runs, toys, winrates):
    return None, "checked by the test suite against the explicit matrix (tests/test_logprobs.py), not from runs", NA


@claim(
    "3",
    "Squeezing lemmas",
    "A negative-gradient step on ȳ of a linear-softmax head lowers π(ȳ), raises the "
    "runner-up π(y*), and raises π_i exactly when π_i > log Z/η'. Notebook: case C argmax 0.763 → 0.987; case E "
    "0.512 → 1.000 with 999/1000 classes decreasing.",
)
def _lemmas(runs, toys, winrates):
    if "squeeze" not in toys:
        return None, NO_TOY, NA
    cases, checks = {c["case"]: c for c in toys["squeeze"]["cases"]}, toys["squeeze"]["check"]
    c, e = cases["C"], cases["E"]
    ok = (
        all(r["violations"] == 0 for r in checks)
        and c["argmax_after"] > c["argmax_before"]
        and e["argmax_after"] > e["argmax_before"]
        and e["rising"] == 1
    )
    text = "; ".join(f"{r['statement']}: {r['violations']} violations on {r['checked']} random heads" for r in checks)
    text += (
        f"; case C argmax {c['argmax_before']:.3f} → {c['argmax_after']:.3f}; case E {e['argmax_before']:.3f} → "
        f"{e['argmax_after']:.3f}, {e['labels'] - e['rising']}/{e['labels']} classes decrease"
    )
    return None, text, _v(ok)


@claim(
    "4",
    "Positive vs negative gradient (toy)",
    "A positive gradient concentrates mass on y⁺ (case A: "
    "0.072 → 0.947); a negative gradient on a flat π spreads it (case B: 49/50 classes rise).",
)
def _toy_ab(runs, toys, winrates):
    if "squeeze" not in toys:
        return None, NO_TOY, NA
    a, b = ({c["case"]: c for c in toys["squeeze"]["cases"]}[k] for k in "AB")
    ok = a["plus_after"] > a["plus_before"] and a["plus_after"] > 0.5 and b["rising"] >= b["labels"] - 1
    return (
        None,
        (
            f"case A π(y⁺) {a['plus_before']:.3f} → {a['plus_after']:.3f}; case B {b['rising']}/{b['labels']} "
            "classes rise"
        ),
        _v(ok),
    )


@claim("5", "SFT: chosen rises", "log π(y_u⁺) increases for ~100% of probe prompts (Pythia-410M: −152 → −92).")
def _sft_chosen(runs, toys, winrates):
    s = _first(stages_where(runs, sft_on_chosen))
    if s is None:
        return None, "no SFT-on-chosen stage with probes", NA
    d, up = s.delta("chosen"), s.share("chosen", up=True)
    start, end = s.means("chosen")[1][[0, -1]]
    return (
        s,
        f"y_u⁺ {start:.1f} → {end:.1f} ({_f(d)} nats); up for {up:.0%} of prompts (rule: Δ > 0, ≥ 90% up)",
        _v(d > 0 and up >= 0.9),
    )


@claim(
    "6",
    "SFT: hallucination signature",
    "Δ log π(y_{j≠u}⁺ | x_u) > 0 and exceeds Δ log π(y_test⁺ | x_u) (Qwen-1.8B: +20.8 vs +3.7).",
)
def _sft_irr(runs, toys, winrates):
    return _trained_vs_unseen(_first(stages_where(runs, sft_on_chosen)), "SFT-on-chosen", rises=True)


def _trained_vs_unseen(s: Stage | None, kind: str, rises: bool):
    """Δ of another training prompt's answer y_{j≠u}⁺ against an unseen one's y_test⁺ (and, for SFT, y_{j≠u}⁺ up)."""
    if s is None or not (s.has("irr_train") and s.has("irr_test")):
        return s, f"no {kind} stage probing irr_train and irr_test", NA
    a, b = s.delta("irr_train"), s.delta("irr_test")
    rule = "first > 0 and > second" if rises else "first > second"
    return s, f"Δ y_{{j≠u}}⁺ {_f(a)}, Δ y_test⁺ {_f(b)} nats (rule: {rule})", _v(a > b and (a > 0 or not rises))


@claim(
    "7",
    "SFT: rejected rises first",
    "log π(y_u⁻) rises during the first evaluations (Qwen-1.8B: −97.1 → −87.0), then plateaus or slightly declines.",
)
def _sft_rejected(runs, toys, winrates):
    s = _first(stages_where(runs, sft_on_chosen))
    if s is None or not s.has("rejected") or len(s.steps("rejected")) < 3:
        return s, "no SFT-on-chosen stage with ≥ 3 probes of rejected", NA
    steps, m = s.means("rejected")
    first, later = m[1] - m[0], (m[-1] - m[1]) / (len(m) - 2)
    return (
        s,
        (
            f"y_u⁻ {m[0]:.1f} → {m[1]:.1f} (step {steps[1]}) → {m[-1]:.1f} (step {steps[-1]}); first interval "
            f"{_f(first)}, later intervals {_f(later)} on average (rule: first > 0 and later < first)"
        ),
        _v(first > 0 and later < first),
    )


@claim(
    "8", "SFT: non-language and irrelevant fall", "log π(y_hum), log π(y_urnd⁺) and log π(y_rnd) decrease during SFT."
)
def _sft_fall(runs, toys, winrates):
    s = _first(stages_where(runs, sft_on_chosen))
    wanted = ("irr_hum", *RANDOM_TYPES)
    if s is None or not all(s.has(t) for t in wanted):
        return s, "no SFT-on-chosen stage probing irr_hum, random_permute and random_nonhum", NA
    d = {t: s.delta(t) for t in wanted}
    return s, ", ".join(f"Δ {t} {_f(v)}" for t, v in d.items()) + " (rule: all < 0)", _v(all(v < 0 for v in d.values()))


@claim(
    "9",
    "SFT: peakiness",
    "‖A_o‖_F increases for every response type, and the teacher-forced argmax log-prob "
    "along y_u⁺ increases (Pythia-410M: −61.6 → −44.5).",
)
def _sft_peaky(runs, toys, winrates):
    s = _first(stages_where(runs, sft_on_chosen))
    if s is None or not s.has("argmax"):
        return s, "no SFT-on-chosen stage with argmax probes", NA
    rises = {t: s.delta(t, "a_norm") for t in s.types() if s.has(t, "a_norm")}
    up = [t for t, v in rises.items() if v > 0]
    d = s.delta("argmax")
    return (
        s,
        (
            f"‖A‖_F rises for {len(up)}/{len(rises)} types (min Δ {min(rises.values()):+.2f}); Δ argmax {_f(d)} "
            "(rule: every type's ‖A‖_F up, argmax up)"
        ),
        _v(len(up) == len(rises) and d > 0),
    )


@claim(
    "10",
    "DPO: margin grows",
    "log π(y_u⁺) − log π(y_u⁻) increases monotonically (Pythia-410M: −30.6 → +51.3); "
    "y_u⁻ has the largest drop of the natural-language types.",
)
def _dpo_margin(runs, toys, winrates):
    s = _first(stages_where(runs, dpo_from_base))
    if s is None or not s.has("rejected"):
        return s, "no off-policy DPO stage from the base model probing rejected", NA
    margin = s.means("chosen")[1] - s.means("rejected")[1]
    monotone = bool(np.all(np.diff(margin) >= 0))
    natural = [t for t in s.types() if t not in RANDOM_TYPES]
    drops = {t: s.delta(t) for t in natural}
    largest = min(drops, key=drops.get)
    return (
        s,
        (
            f"margin {' → '.join(f'{m:.1f}' for m in margin)} ({'monotone' if monotone else 'not monotone'}); "
            f"largest natural-language drop: {largest} {_f(drops[largest])}"
            + (f" (y_u⁻ {_f(drops['rejected'])})" if largest != "rejected" else "")
        ),
        _v(monotone and margin[-1] > margin[0] and largest == "rejected"),
    )


@claim(
    "11",
    "DPO: chosen rises then falls",
    "log π(y_u⁺) first increases, then decreases, and with long enough "
    "training ends below its initial value (Pythia-1B −132.3 → −139.0; Qwen-0.5B −132.7 → −159.8).",
)
def _dpo_chosen(runs, toys, winrates):
    s = _first(stages_where(runs, dpo_from_base))
    if s is None:
        return s, "no off-policy DPO stage from the base model", NA
    steps, m = s.means("chosen")
    peak = int(np.argmax(m))
    return (
        s,
        (
            f"y_u⁺ {m[0]:.1f} → peak {m[peak]:.1f} (step {steps[peak]}) → {m[-1]:.1f} at step {steps[-1]} "
            "(rule: some probe above the start, and the end below the start)"
        ),
        _v(m[peak] > m[0] and m[-1] < m[0]),
    )


@claim(
    "12",
    "DPO: everything else falls",
    "All other types (rephrases, y_{j≠u}⁺, y_test⁺, y_hum, y_urnd⁺, y_rnd, y_init) decrease for ≥ 95% of prompts.",
)
def _dpo_others(runs, toys, winrates):
    s = _first(stages_where(runs, dpo_from_base))
    others = [t for t in (s.types() if s else []) if t not in ("chosen", "rejected")]
    if not others:
        return s, "no off-policy DPO stage from the base model probing other response types", NA
    down = {t: s.share(t, up=False) for t in others}
    worst = min(down, key=down.get)
    return (
        s,
        (
            f"{sum(v >= 0.95 for v in down.values())}/{len(down)} types fall for ≥ 95% of prompts; least: {worst} "
            f"({down[worst]:.0%} down, Δ {_f(s.delta(worst))})"
        ),
        _v(all(v >= 0.95 for v in down.values())),
    )


@claim(
    "13",
    "DPO: squeezing signature",
    "While log π(y_u⁺) decreases, the teacher-forced argmax log-prob along y_u⁺ "
    "and ‖A‖_F increase (Qwen-0.5B: argmax −51.6 → −35.9 while chosen −132.7 → −159.8).",
)
def _dpo_squeeze(runs, toys, winrates):
    s = _first(stages_where(runs, dpo_from_base))
    if s is None or not s.has("argmax"):
        return s, "no off-policy DPO stage from the base model with argmax probes", NA
    steps, m = s.means("chosen")
    peak = int(np.argmax(m))
    if peak == len(m) - 1:
        return s, f"y_u⁺ never falls in this stage (its highest probe is the last, {m[-1]:.1f})", NA
    since = int(steps[peak])
    da, dn = s.delta("argmax", since=since), s.delta("chosen", "a_norm", since=since)
    return (
        s,
        (
            f"from step {since} to {steps[-1]}: Δ y_u⁺ {_f(m[-1] - m[peak])}, Δ argmax {_f(da)}, Δ ‖A‖_F(y_u⁺) "
            f"{dn:+.2f} (rule: both up)"
        ),
        _v(da > 0 and dn > 0),
    )


@claim(
    "14",
    "DPO: trained vs unseen irrelevant",
    "Under DPO, y_{j≠u}⁺ drops less than y_test⁺ (Pythia-410M: −29.6 vs −49.0).",
)
def _dpo_irr(runs, toys, winrates):
    return _trained_vs_unseen(
        _first(stages_where(runs, dpo_from_base)), "off-policy DPO (from the base model)", rises=False
    )


@claim(
    "15",
    "DPO from SFT",
    "Starting from an SFT model, y_u⁺ decreases from the start of DPO (Qwen-1.8B: −78 → −136) while the argmax rises.",
)
def _dpo_from_sft(runs, toys, winrates):
    s = _first(stages_where(runs, dpo_after(sft_on_chosen)))
    if s is None or not s.has("argmax"):
        return s, "no run with off-policy DPO after SFT on chosen", NA
    steps, m = s.means("chosen")
    d = s.delta("argmax")
    return (
        s,
        (
            f"y_u⁺ {m[0]:.1f} → {m[1]:.1f} (step {steps[1]}) → {m[-1]:.1f}; Δ argmax {_f(d)} (rule: y_u⁺ lower at "
            "the first probe and at the end, argmax up)"
        ),
        _v(m[1] < m[0] and m[-1] < m[0] and d > 0),
    )


@claim(
    "16",
    "Learning-rate sensitivity",
    "A larger DPO learning rate makes y_u⁺ collapse much faster (−152 → −205 within ~10 evaluations).",
)
def _lr(runs, toys, winrates):
    stages = stages_where(runs, dpo_from_base)
    by_lr: dict[float, Stage] = {}
    for s in stages:
        by_lr.setdefault(float(s.config.get("optim", {}).get("lr", 0)), s)
    if len(by_lr) < 2:
        return None, "fewer than two learning rates of off-policy DPO from the base model", NA
    common = min(s.end for s in by_lr.values())
    lrs = sorted(by_lr)
    d = [by_lr[lr].delta("chosen", until=common) for lr in lrs]
    monotone = all(b < a for a, b in zip(d, d[1:]))
    return (
        tuple(by_lr[lr] for lr in lrs),
        (
            ", ".join(f"lr {lr:g}: Δ y_u⁺ {_f(x)}" for lr, x in zip(lrs, d))
            + f" at step {common} (rule: lower for every larger lr, and < 0 at the "
            "largest)"
        ),
        _v(monotone and d[-1] < 0),
    )


def _extend_pair(runs):
    base = _first(stages_where(runs, sft_on_chosen))
    ext = _first(stages_where(runs, extend_sft))
    return base, ext


@claim(
    "17",
    "Extend SFT",
    "SFT on chosen ∪ rejected raises log π(y_u⁻) far above baseline SFT (Qwen-1.8B: −60.6 vs "
    "−88.6) with a comparable rise of y_u⁺.",
)
def _extend_sft(runs, toys, winrates):
    base, ext = _extend_pair(runs)
    if base is None or ext is None:
        return None, "needs an SFT-on-chosen stage and an extend SFT stage", NA
    rb, re_, cb, ce = base.delta("rejected"), ext.delta("rejected"), base.delta("chosen"), ext.delta("chosen")
    return (
        (base, ext),
        (
            f"Δ y_u⁻ extend {_f(re_)} vs baseline {_f(rb)}; Δ y_u⁺ extend {_f(ce)} vs baseline {_f(cb)} "
            "(rule: the y_u⁻ gap ≥ half the baseline's y_u⁺ gain, and extend's y_u⁺ gain ≥ half the "
            "baseline's)"
        ),
        _v(re_ - rb >= 0.5 * abs(cb) and ce >= 0.5 * cb),
    )


@claim(
    "18",
    "Extend DPO",
    "Starting DPO from extend-SFT gives a smaller drop of y_u⁺ and of the other responses, "
    "and a smaller rise of the argmax, than from baseline SFT, over the same number of DPO steps.",
)
def _extend_dpo(runs, toys, winrates):
    base = _first(stages_where(runs, dpo_after(sft_on_chosen)))
    ext = _first(stages_where(runs, dpo_after(extend_sft)))
    if base is None or ext is None:
        return None, "needs DPO after SFT on chosen and DPO after extend SFT", NA
    n = min(base.end - base.start, ext.end - ext.start)
    ub, ue = base.start + n, ext.start + n
    c = base.delta("chosen", until=ub), ext.delta("chosen", until=ue)
    o = base.others_delta(until=ub), ext.others_delta(until=ue)
    a = base.delta("argmax", until=ub), ext.delta("argmax", until=ue)
    return (
        (base, ext),
        (
            f"over {n} DPO updates, baseline vs extend: Δ y_u⁺ {_f(c[0])} vs {_f(c[1])}; Δ others "
            f"{_f(o[0])} vs {_f(o[1])}; Δ argmax {_f(a[0])} vs {_f(a[1])} (rule: extend's y_u⁺ and "
            "others fall less, its argmax rises less)"
        ),
        _v(c[1] > c[0] and o[1] > o[0] and a[1] < a[0]),
    )


@claim(
    "19",
    "Win rate",
    "With gpt-3.5-turbo or claude-3-haiku as judge on 500 HH test prompts, extend-DPO beats "
    "baseline-DPO (win rate > 0.5); after SFT alone the two are comparable.",
)
def _winrate(runs, toys, winrates):
    ext = {s.run.path.name for s in stages_where(runs, dpo_after(extend_sft), probed=False)}
    base = {s.run.path.name for s in stages_where(runs, dpo_after(sft_on_chosen), probed=False)}
    found = [
        r
        for r in winrates
        if r["a"].split("/")[0] in ext
        and r["b"].split("/")[0] in base
        and r["a"].endswith("/dpo")
        and r["b"].endswith("/dpo")
    ]
    if not found:
        return None, "no win-rate result of extend-DPO against baseline-DPO", NA
    r = found[0]
    others = "; ".join(summary(x) for x in winrates if x is not r)
    text = summary(r) + (f"; also {others}" if others else "")
    if r["win_rate"] is None:
        return None, text, NA
    if r["low"] > 0.5:
        return None, text + " (rule: 95% interval above 0.5)", HOLDS
    if r["win_rate"] <= 0.5:
        return None, text + " (rule: win rate > 0.5)", FAILS
    return None, text + " (inconclusive: the 95% interval includes 0.5)", NA


def _on_policy(kind: Callable, label: str):
    def rule(runs, toys, winrates):
        on = _first(stages_where(runs, kind))
        off = _first(stages_where(runs, dpo_from_base))
        if on is None or off is None or not (on.has("argmax") and off.has("argmax")):
            return None, f"needs a {label} stage and off-policy DPO from the base model, with argmax probes", NA
        first_on = Stage(on.run, None)  # the whole run from step 0: SPIN has a stage per iteration
        shared = set(first_on.steps("chosen")) & set(off.steps("chosen")) - {0}
        if not shared:
            return None, f"the {label} and off-policy runs share no probed step after 0", NA
        common = int(max(shared))
        c = off.delta("chosen", until=common), first_on.delta("chosen", until=common)
        o = off.others_delta(until=common), first_on.others_delta(until=common)
        a = off.delta("argmax", until=common), first_on.delta("argmax", until=common)
        return (
            (off, first_on),
            (
                f"at step {common}, off-policy vs {label}: Δ y_u⁺ {_f(c[0])} vs {_f(c[1])}; Δ "
                f"others {_f(o[0])} vs {_f(o[1])}; Δ argmax {_f(a[0])} vs {_f(a[1])} (rule: "
                f"{label} y_u⁺ and others fall less, argmax rises less)"
            ),
            _v(c[1] > c[0] and o[1] > o[0] and a[1] < a[0]),
        )

    return rule


def on_policy_dpo(run: Run, i: int, s: dict) -> bool:
    sample = s.get("sample", {})
    return i == 0 and _loss(s) == "dpo" and sample.get("responses") == "rejected" and sample.get("source") == "policy"


def ranked_dpo(run: Run, i: int, s: dict) -> bool:
    return i == 0 and _loss(s) == "dpo" and _sampled(s) == "both"


def spin(run: Run, i: int, s: dict) -> bool:
    sample = s.get("sample", {})
    return i == 0 and sample.get("responses") == "rejected" and sample.get("source") == "reference"


PAPER_20 = (
    "DPO with y⁻ sampled on-policy shows a smaller fall of y_u⁺ and of the other responses, and a smaller "
    "argmax rise, than off-policy DPO at equal steps."
)
claim("20", "On-policy DPO (y⁻ sampled)", PAPER_20)(_on_policy(on_policy_dpo, "on-policy"))
claim("20b", "On-policy DPO (both sampled, ranked)", PAPER_20)(_on_policy(ranked_dpo, "ranked on-policy"))
claim("20c", "SPIN (y⁻ = the previous iterate's sample)", PAPER_20)(_on_policy(spin, "SPIN"))


def _sign_delta(run: Run) -> dict[str, float]:
    """Mean SignDelta per observed type over every decomposed update and prompt of a run."""
    by_type: dict[str, list[float]] = {}
    for row in run.decomposition:
        if "observed/sign_delta" in row:
            by_type.setdefault(row["type"], []).append(row["observed/sign_delta"])
    return {t: float(np.mean(v)) for t, v in by_type.items()}


def _decomposed(runs, test):
    return [r for r in runs if r.decomposition and r.config.get("stages") and test(r, 0, r.config["stages"][0])]


@claim("21a", "Appendix C: LBK ranking stable", "The ranking of LBK across response types is stable over training.")
def _lbk(runs, toys, winrates):
    rhos = []
    for run in [r for r in runs if r.decomposition]:
        steps = sorted({row["step"] for row in run.decomposition})
        if len(steps) < 2:
            continue
        ranks = []
        for step in (steps[0], steps[-1]):
            by_type: dict[str, list[float]] = {}
            for row in run.decomposition:
                if row["step"] == step:
                    by_type.setdefault(row["type"], []).append(row["observed/lbk"])
            ranks.append({t: float(np.mean(v)) for t, v in by_type.items()})
        types = sorted(set(ranks[0]) & set(ranks[1]))
        if len(types) >= 3:
            rhos.append((run.path.name, _spearman([ranks[0][t] for t in types], [ranks[1][t] for t in types])))
    if not rhos:
        return None, "no run with decomposition records at two or more updates", NA
    mean = float(np.mean([r for _, r in rhos]))
    return (
        None,
        (
            f"Spearman ρ of per-type LBK, first vs last decomposed update: mean {mean:.2f} over {len(rhos)} "
            f"runs (min {min(r for _, r in rhos):.2f}; rule: mean ≥ 0.8)"
        ),
        _v(mean >= 0.8),
    )


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@claim(
    "21b",
    "Appendix C: SignDelta under SFT",
    "Under SFT on natural language, SignDelta is positive for y_u⁺ and y_{j≠u}⁺ and negative for y_urnd⁺ and y_rnd.",
)
def _sign_sft(runs, toys, winrates):
    found = _decomposed(runs, sft_on_chosen)
    if not found:
        return None, "no decomposed SFT-on-chosen run", NA
    sd = _sign_delta(found[0])
    want = {"chosen": 1, "irr_train": 1, "random_permute": -1, "random_nonhum": -1}
    if not all(t in sd for t in want):
        return None, "the decomposed SFT run lacks chosen, irr_train, random_permute or random_nonhum", NA
    ok = all(np.sign(sd[t]) == s for t, s in want.items())
    return None, ", ".join(f"{t} {sd[t]:+.2e}" for t in want) + f" ({found[0].path.name})", _v(ok)


@claim("21c", "Appendix C: SignDelta under DPO", "Under DPO, SignDelta is negative for all types except y_u⁺.")
def _sign_dpo(runs, toys, winrates):
    found = _decomposed(runs, off_policy_dpo)
    if not found:
        return None, "no decomposed off-policy DPO run", NA
    sd = _sign_delta(found[0])
    wrong = [t for t, v in sd.items() if t != "chosen" and v >= 0]
    return (
        None,
        (
            f"{len(sd) - 1 - len(wrong)}/{len(sd) - 1} other types negative"
            + (f"; positive: {', '.join(f'{t} {sd[t]:+.2e}' for t in wrong)}" if wrong else "")
            + f"; y_u⁺ {sd.get('chosen', float('nan')):+.2e} ({found[0].path.name})"
        ),
        _v(not wrong),
    )


# ---------------------------------------------------------------- all claims


def read_toys(paths: list[Path]) -> dict:
    toys = {}
    for p in paths:
        if (p / "squeeze.json").is_file():
            toys["squeeze"] = json.loads((p / "squeeze.json").read_text())
    return toys


def check_claims(runs: list[Run], toys: dict | None = None, winrates: list[dict] | None = None) -> list[Verdict]:
    """Every claim's verdict on these runs (toys: {"squeeze": squeeze.json}; winrates: winrate.json rows)."""
    verdicts = []
    for id_, title, paper, rule in CLAIMS:
        stages, measured, verdict = rule(runs, toys or {}, winrates or [])
        if isinstance(stages, Stage):
            stages = (stages,)
        verdicts.append(Verdict(id_, title, paper, measured, verdict, tuple(s.label for s in stages or ())))
    return verdicts
