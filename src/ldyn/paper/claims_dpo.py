"""The paper's claims 10–16 (paper.md §7): off-policy DPO from the base model or from SFT, and its learning rate."""

from __future__ import annotations

import numpy as np

from ldyn.paper.claims_sft import trained_vs_unseen
from ldyn.paper.stages import Stage, dpo_after, dpo_from_base, richest, sft_on_chosen, stages_where
from ldyn.paper.verdicts import NA, RANDOM_TYPES, claim, signed, verdict


@claim(
    "10",
    "DPO: margin grows",
    "log π(y_u⁺) − log π(y_u⁻) increases monotonically (Pythia-410M: −30.6 → +51.3); "
    "y_u⁻ has the largest drop of the natural-language types.",
)
def _dpo_margin(runs, toys, winrates):
    s = richest(stages_where(runs, dpo_from_base))
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
            f"largest natural-language drop: {largest} {signed(drops[largest])}"
            + (f" (y_u⁻ {signed(drops['rejected'])})" if largest != "rejected" else "")
        ),
        verdict(monotone and margin[-1] > margin[0] and largest == "rejected"),
    )


@claim(
    "11",
    "DPO: chosen rises then falls",
    "log π(y_u⁺) first increases, then decreases, and with long enough "
    "training ends below its initial value (Pythia-1B −132.3 → −139.0; Qwen-0.5B −132.7 → −159.8).",
)
def _dpo_chosen(runs, toys, winrates):
    s = richest(stages_where(runs, dpo_from_base))
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
        verdict(m[peak] > m[0] and m[-1] < m[0]),
    )


@claim(
    "12",
    "DPO: everything else falls",
    "All other types (rephrases, y_{j≠u}⁺, y_test⁺, y_hum, y_urnd⁺, y_rnd, y_init) decrease for ≥ 95% of prompts.",
)
def _dpo_others(runs, toys, winrates):
    s = richest(stages_where(runs, dpo_from_base))
    others = [t for t in (s.types() if s else []) if t not in ("chosen", "rejected")]
    if not others:
        return s, "no off-policy DPO stage from the base model probing other response types", NA
    down = {t: s.share(t, up=False) for t in others}
    worst = min(down, key=down.get)
    return (
        s,
        (
            f"{sum(v >= 0.95 for v in down.values())}/{len(down)} types fall for ≥ 95% of prompts; least: {worst} "
            f"({down[worst]:.0%} down, Δ {signed(s.delta(worst))})"
        ),
        verdict(all(v >= 0.95 for v in down.values())),
    )


@claim(
    "13",
    "DPO: squeezing signature",
    "While log π(y_u⁺) decreases, the teacher-forced argmax log-prob along y_u⁺ "
    "and ‖A‖_F increase (Qwen-0.5B: argmax −51.6 → −35.9 while chosen −132.7 → −159.8).",
)
def _dpo_squeeze(runs, toys, winrates):
    s = richest(stages_where(runs, dpo_from_base))
    if s is None or not s.has("argmax"):
        return s, "no off-policy DPO stage from the base model with argmax probes", NA
    steps, m = s.means("chosen")
    peak = int(np.argmax(m))
    if peak == len(m) - 1:
        return s, f"y_u⁺ never falls in this stage (its highest probe is the last, {m[-1]:.1f})", NA
    since, interval = int(steps[peak]), float(np.median(np.diff(steps)))
    if steps[-1] - since < interval:  # a stage's end probe a few updates after its last regular one is not a fall
        shown = f"from step {since} to {steps[-1]}, {signed(m[-1] - m[peak])}"
        return s, f"y_u⁺ falls only within its last probe interval ({shown}): no fall to read the squeeze on", NA
    da, dn = s.delta("argmax", since=since), s.delta("chosen", "a_norm", since=since)
    return (
        s,
        (
            f"from step {since} to {steps[-1]}: Δ y_u⁺ {signed(m[-1] - m[peak])}, Δ argmax {signed(da)}, Δ ‖A‖_F(y_u⁺) "
            f"{dn:+.2f} (rule: both up)"
        ),
        verdict(da > 0 and dn > 0),
    )


@claim(
    "14",
    "DPO: trained vs unseen irrelevant",
    "Under DPO, y_{j≠u}⁺ drops less than y_test⁺ (Pythia-410M: −29.6 vs −49.0).",
)
def _dpo_irr(runs, toys, winrates):
    return trained_vs_unseen(
        richest(stages_where(runs, dpo_from_base)), "off-policy DPO (from the base model)", rises=False
    )


@claim(
    "15",
    "DPO from SFT",
    "Starting from an SFT model, y_u⁺ decreases from the start of DPO (Qwen-1.8B: −78 → −136) while the argmax rises.",
)
def _dpo_from_sft(runs, toys, winrates):
    s = richest(stages_where(runs, dpo_after(sft_on_chosen)))
    if s is None or not s.has("argmax"):
        return s, "no run with off-policy DPO after SFT on chosen", NA
    steps, m = s.means("chosen")
    d = s.delta("argmax")
    return (
        s,
        (
            f"y_u⁺ {m[0]:.1f} → {m[1]:.1f} (step {steps[1]}) → {m[-1]:.1f}; Δ argmax {signed(d)} (rule: y_u⁺ lower at "
            "the first probe and at the end, argmax up)"
        ),
        verdict(m[1] < m[0] and m[-1] < m[0] and d > 0),
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
        by_lr.setdefault(float(s.config.optim.lr), s)
    if len(by_lr) < 2:
        return None, "fewer than two learning rates of off-policy DPO from the base model", NA
    common = min(s.end for s in by_lr.values())
    lrs = sorted(by_lr)
    d = [by_lr[lr].delta("chosen", until=common) for lr in lrs]
    monotone = all(b < a for a, b in zip(d, d[1:]))
    return (
        tuple(by_lr[lr] for lr in lrs),
        (
            ", ".join(f"lr {lr:g}: Δ y_u⁺ {signed(x)}" for lr, x in zip(lrs, d))
            + f" at step {common} (rule: lower for every larger lr, and < 0 at the "
            "largest)"
        ),
        verdict(monotone and d[-1] < 0),
    )
