"""The paper's claims 17–21 (paper.md §7): extend against baseline, the win rate, on-policy DPO and SPIN, and the
Appendix C decomposition statistics (LBK, SignDelta)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ldyn.paper.stages import (
    Stage,
    dpo_after,
    dpo_from_base,
    extend_sft,
    off_policy_dpo,
    on_policy_dpo,
    ranked_dpo,
    richest,
    sft_on_chosen,
    spin,
    stages_where,
)
from ldyn.paper.verdicts import FAILS, HOLDS, NA, claim, signed, verdict
from ldyn.paper.winrate import summary
from ldyn.runs.directory import Run


def _extend_pair(runs):
    base = richest(stages_where(runs, sft_on_chosen))
    ext = richest(stages_where(runs, extend_sft))
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
            f"Δ y_u⁻ extend {signed(re_)} vs baseline {signed(rb)}; "
            f"Δ y_u⁺ extend {signed(ce)} vs baseline {signed(cb)} (rule: the y_u⁻ gap ≥ half the baseline's y_u⁺ "
            "gain, and extend's y_u⁺ gain ≥ half the baseline's)"
        ),
        verdict(re_ - rb >= 0.5 * abs(cb) and ce >= 0.5 * cb),
    )


@claim(
    "18",
    "Extend DPO",
    "Starting DPO from extend-SFT gives a smaller drop of y_u⁺ and of the other responses, "
    "and a smaller rise of the argmax, than from baseline SFT, over the same number of DPO steps.",
)
def _extend_dpo(runs, toys, winrates):
    base = richest(stages_where(runs, dpo_after(sft_on_chosen)))
    ext = richest(stages_where(runs, dpo_after(extend_sft)))
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
            f"over {n} DPO updates, baseline vs extend: Δ y_u⁺ {signed(c[0])} vs {signed(c[1])}; Δ others "
            f"{signed(o[0])} vs {signed(o[1])}; Δ argmax {signed(a[0])} vs {signed(a[1])} (rule: extend's y_u⁺ and "
            "others fall less, its argmax rises less)"
        ),
        verdict(c[1] > c[0] and o[1] > o[0] and a[1] < a[0]),
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
        on = richest(stages_where(runs, kind))
        off = richest(stages_where(runs, dpo_from_base))
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
                f"at step {common}, off-policy vs {label}: Δ y_u⁺ {signed(c[0])} vs {signed(c[1])}; Δ "
                f"others {signed(o[0])} vs {signed(o[1])}; Δ argmax {signed(a[0])} vs {signed(a[1])} (rule: "
                f"{label} y_u⁺ and others fall less, argmax rises less)"
            ),
            verdict(c[1] > c[0] and o[1] > o[0] and a[1] < a[0]),
        )

    return rule


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
    return [r for r in runs if r.decomposition and r.config.stages and test(r, 0, r.config.stages[0])]


@claim("21a", "Appendix C: LBK ranking stable", "The ranking of LBK across response types is stable over training.")
def _lbk(runs, toys, winrates):
    rhos = []
    for run in [r for r in runs if r.decomposition]:
        lbk = [row for row in run.decomposition if "observed/lbk" in row]  # not when G was unknown (callback)
        steps = sorted({row["step"] for row in lbk})
        if len(steps) < 2:
            continue
        ranks = []
        for step in (steps[0], steps[-1]):
            by_type: dict[str, list[float]] = {}
            for row in lbk:
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
        verdict(mean >= 0.8),
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
    return None, ", ".join(f"{t} {sd[t]:+.2e}" for t in want) + f" ({found[0].path.name})", verdict(ok)


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
        verdict(not wrong),
    )
