"""The paper's claims 1–9 (paper.md §7): the toys' squeezing statements and what SFT does to each response type."""

from __future__ import annotations

from ldyn.paper.stages import Stage, richest, sft_on_chosen, stages_where
from ldyn.paper.verdicts import NA, RANDOM_TYPES, claim, signed, verdict

NO_TOY = "no toy_squeeze results among these runs"


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
    return None, text, verdict(ok)


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
        verdict(ok),
    )


@claim("5", "SFT: chosen rises", "log π(y_u⁺) increases for ~100% of probe prompts (Pythia-410M: −152 → −92).")
def _sft_chosen(runs, toys, winrates):
    s = richest(stages_where(runs, sft_on_chosen))
    if s is None:
        return None, "no SFT-on-chosen stage with probes", NA
    d, up = s.delta("chosen"), s.share("chosen", up=True)
    start, end = s.means("chosen")[1][[0, -1]]
    return (
        s,
        f"y_u⁺ {start:.1f} → {end:.1f} ({signed(d)} nats); up for {up:.0%} of prompts (rule: Δ > 0, ≥ 90% up)",
        verdict(d > 0 and up >= 0.9),
    )


@claim(
    "6",
    "SFT: hallucination signature",
    "Δ log π(y_{j≠u}⁺ | x_u) > 0 and exceeds Δ log π(y_test⁺ | x_u) (Qwen-1.8B: +20.8 vs +3.7).",
)
def _sft_irr(runs, toys, winrates):
    return trained_vs_unseen(richest(stages_where(runs, sft_on_chosen)), "SFT-on-chosen", rises=True)


def trained_vs_unseen(s: Stage | None, kind: str, rises: bool):
    """Δ of another training prompt's answer y_{j≠u}⁺ against an unseen one's y_test⁺ (and, for SFT, y_{j≠u}⁺ up)."""
    if s is None or not (s.has("irr_train") and s.has("irr_test")):
        return s, f"no {kind} stage probing irr_train and irr_test", NA
    a, b = s.delta("irr_train"), s.delta("irr_test")
    rule = "first > 0 and > second" if rises else "first > second"
    return (
        s,
        f"Δ y_{{j≠u}}⁺ {signed(a)}, Δ y_test⁺ {signed(b)} nats (rule: {rule})",
        verdict(a > b and (a > 0 or not rises)),
    )


@claim(
    "7",
    "SFT: rejected rises first",
    "log π(y_u⁻) rises during the first evaluations (Qwen-1.8B: −97.1 → −87.0), then plateaus or slightly declines.",
)
def _sft_rejected(runs, toys, winrates):
    s = richest(stages_where(runs, sft_on_chosen))
    if s is None or not s.has("rejected") or len(s.steps("rejected")) < 3:
        return s, "no SFT-on-chosen stage with ≥ 3 probes of rejected", NA
    steps, m = s.means("rejected")
    first, later = m[1] - m[0], (m[-1] - m[1]) / (len(m) - 2)
    return (
        s,
        (
            f"y_u⁻ {m[0]:.1f} → {m[1]:.1f} (step {steps[1]}) → {m[-1]:.1f} (step {steps[-1]}); first interval "
            f"{signed(first)}, later intervals {signed(later)} on average (rule: first > 0 and later < first)"
        ),
        verdict(first > 0 and later < first),
    )


@claim(
    "8", "SFT: non-language and irrelevant fall", "log π(y_hum), log π(y_urnd⁺) and log π(y_rnd) decrease during SFT."
)
def _sft_fall(runs, toys, winrates):
    s = richest(stages_where(runs, sft_on_chosen))
    wanted = ("irr_hum", *RANDOM_TYPES)
    if s is None or not all(s.has(t) for t in wanted):
        return s, "no SFT-on-chosen stage probing irr_hum, random_permute and random_nonhum", NA
    d = {t: s.delta(t) for t in wanted}
    return (
        s,
        ", ".join(f"Δ {t} {signed(v)}" for t, v in d.items()) + " (rule: all < 0)",
        verdict(all(v < 0 for v in d.values())),
    )


@claim(
    "9",
    "SFT: peakiness",
    "‖A_o‖_F increases for every response type, and the teacher-forced argmax log-prob "
    "along y_u⁺ increases (Pythia-410M: −61.6 → −44.5).",
)
def _sft_peaky(runs, toys, winrates):
    s = richest(stages_where(runs, sft_on_chosen))
    if s is None or not s.has("argmax"):
        return s, "no SFT-on-chosen stage with argmax probes", NA
    rises = {t: s.delta(t, "a_norm") for t in s.types() if s.has(t, "a_norm")}
    if not rises:
        return s, "no probe rows with ‖A‖_F (a_norm)", NA
    up = [t for t, v in rises.items() if v > 0]
    d = s.delta("argmax")
    return (
        s,
        (
            f"‖A‖_F rises for {len(up)}/{len(rises)} types (min Δ {min(rises.values()):+.2f}); Δ argmax {signed(d)} "
            "(rule: every type's ‖A‖_F up, argmax up)"
        ),
        verdict(len(up) == len(rises) and d > 0),
    )
