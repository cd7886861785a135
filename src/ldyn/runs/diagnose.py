"""Which of the paper's phenomena a run shows, in words: one `Finding` per (phenomenon, stage) that passes its rule.

Every rule reads the probe rows of one stage, from the stage's first probe round (the step it starts at, which is
the previous stage's last round) to its last, and compares the last round with the first. A rule says nothing
(no finding) when the response types or columns it needs were not probed, or the stage has fewer than two rounds.
Its thresholds are the module constants below, chosen from what a change means, never fitted to a run:

    MIN_NATS   0.5 nat   a change of a summed log π counts from e^0.5 ≈ 1.65× in likelihood
    MIN_SHARE  60%       ... and when at least this share of the probed prompts moved that way (a clear majority,
                         not a coin flip: 5 of 8 prompts)
    MIN_MASS   0.05      the argmax's per-token mass moves by 5 points of probability
    MIN_A_NORM 1%        ‖A‖_F moves by 1% of its value: ‖A‖_F² = V − 2 + V‖π‖², so ‖π‖² moves by ≳ 0.02
    MIN_ENTROPY 0.1 nat  the per-token entropy falls by a tenth of a nat (e^{0.1 L} fewer typical continuations of
                         an L-token response)

The rules: `squeezing`, `displacement`, `hallucination`, `peakiness`, `over_optimisation`, and for RL stages
those of `diagnose_rl.py` (`lazy_likelihood_displacement`, `entropy_collapse`); `diagnose` runs them all on every
stage. The thresholds and the per-stage view they read are in `findings.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ldyn.errors import LdynError
from ldyn.logprobs.tokens import TOP_K
from ldyn.losses import get_loss
from ldyn.runs.diagnose_rl import RL_RULES
from ldyn.runs.directory import Run, load_run, probe_table, stage_spans
from ldyn.runs.findings import (
    COLUMNS,
    MIN_A_NORM,
    MIN_ENTROPY,
    MIN_MASS,
    MIN_NATS,
    MIN_SHARE,
    NOT_LANGUAGE,
    Finding,
    StageView,
    join,
    mean,
    moved,
    of_prompts,
    share,
)

PREFERENCE_LEVERS = [
    "extend: SFT on chosen ∪ rejected before the preference stage lifts y⁻ out of the valley",
    "on-policy samples: a y⁻ drawn from the policy (sample.responses=rejected) is not in a valley",
    "a smaller learning rate (or fewer updates): the squeeze compounds with every step",
    "an SFT term on chosen (RPO, DPOP) keeps y⁺ from being pushed down with the rest",
]
SFT_LEVERS = ["a smaller learning rate or fewer updates: the effect accumulates with every update"]
MECHANISMS = {
    "squeezing": "A negative gradient on an already unlikely y⁻ pushes down almost every token and moves the mass "
    "to the current argmax, so y⁻, y⁺ and every other response fall while the greedy response rises.",
    "displacement": "The preference loss only asks for a larger margin; the negative gradient on y⁻ also lowers "
    "y⁺ through the shared eNTK, and once it outweighs the positive term y⁺ ends less likely than it started.",
    "hallucination": "Learning [x_j; y_j⁺] raises y_j⁺ under every prompt x_u similar to x_j (through K), so the "
    "model gives other training questions' answers more mass than unseen answers when asked x_u.",
    "peakiness": "Each update sharpens π along the trained responses (SFT's positive gradient, or the squeeze of a "
    "negative one), so the mass concentrates on the argmax token and diversity falls.",
    "over_optimisation": "Shi et al. 2024 (arXiv 2410.11677): when the entropy over the top-k tokens falls and their "
    "combined mass shrinks, the model has traded its output diversity for likelihood, and a further rise of "
    "chosen or of the margin starts to cost win rate instead of buying it.",
}
TITLES = {
    "squeezing": "squeezing effect",
    "displacement": "likelihood displacement",
    "hallucination": "SFT hallucination signature",
    "peakiness": "growing peakiness",
    "over_optimisation": "over-optimisation signs",
}


def finding(view: StageView, key: str, text: str, share_: float | None, values: dict, levers: list[str]) -> Finding:
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
    return Finding(key, view.name, TITLES[key], f"{view.label}: {text}", share_, MECHANISMS[key], levers, rounded)


def squeezing(view: StageView) -> Finding | None:
    """Preference stages: y⁻ falls while the argmax (along chosen) rises and the other natural-language responses
    fall -- each by MIN_NATS in the mean, and all three together in at least MIN_SHARE of the prompts (the other
    responses taken as their per-prompt mean); and/or chosen peaks within the stage: the mean curve's highest
    round lies strictly inside it, MIN_NATS above the first round and MIN_NATS above the last, with at least
    MIN_SHARE of the prompts above their start at that round and below it at the end. With decomposition rows,
    the text adds the share of decomposed updates predicted to lower y⁻ and raise the argmax token's mass."""
    if not view.preference:
        return None
    parts, values, shares = [], {}, []
    rej, arg = view.change("rejected"), view.change("argmax")
    per_other = [view.change(t) for t in view.others()]
    ids = set(rej) & set(arg) & set.intersection(*(set(o) for o in per_other)) if per_other else set()
    oth = {e: float(np.mean([o[e] for o in per_other])) for e in ids}
    if ids and moved(rej, False, MIN_NATS) and moved(arg, True, MIN_NATS) and moved(oth, False, MIN_NATS):
        hits = [rej[e] < 0 < arg[e] and oth[e] < 0 for e in sorted(ids)]
        if np.mean(hits) >= MIN_SHARE:
            values |= {"rejected": mean(rej), "argmax": mean(arg), "others": mean(oth), "others_types": len(per_other)}
            parts.append(
                f"y⁻ fell {-mean(rej):.1f} nats on average while the argmax rose {mean(arg):.1f} and the other "
                f"responses fell {-mean(oth):.1f}; {of_prompts(hits)}"
            )
            shares.append(float(np.mean(hits)))
    peak = chosen_peak(view)
    if peak is not None:
        hits = peak.pop("hits")
        values |= peak
        parts.append(
            f"chosen peaked at step {peak['peak_step']} ({peak['rise']:+.1f}) then fell {peak['fall']:.1f} by step "
            f"{peak['end_step']}; {of_prompts(hits)}"
        )
        shares.append(peak["peak_share"])
    if not parts:
        return None
    predicted = squeeze_updates(view)
    if predicted is not None:
        values |= predicted
        parts.append(
            f"{predicted['squeezed_updates']} of {predicted['decomposed_updates']} decomposed updates predicted "
            "y⁻ down and the argmax token's mass up"
        )
    return finding(view, "squeezing", "; ".join(parts), max(shares), values, PREFERENCE_LEVERS)


def chosen_peak(view: StageView) -> dict | None:
    """Chosen rising then falling within the stage (the second half of `squeezing`'s rule), or None."""
    w = view.window("chosen")
    if w is None or len(w[0]) < 3:
        return None
    steps, _, values = w
    keep = np.isfinite(values).all(axis=0)
    values = values[:, keep]
    if not values.shape[1]:
        return None
    curve = values.mean(axis=1)
    p = int(np.argmax(curve))
    rise, fall = float(curve[p] - curve[0]), float(curve[p] - curve[-1])
    hits = [bool(v[p] > v[0] and v[-1] < v[p]) for v in values.T]
    if not (0 < p < len(curve) - 1 and rise >= MIN_NATS and fall >= MIN_NATS and np.mean(hits) >= MIN_SHARE):
        return None
    return {
        "peak_step": int(steps[p]),
        "end_step": int(steps[-1]),
        "rise": rise,
        "fall": fall,
        "peak_share": float(np.mean(hits)),
        "hits": hits,
    }


def squeeze_updates(view: StageView) -> dict | None:
    """Over the stage's decomposed updates: how many were predicted (first order, along the real step; else the
    observed change) to lower y⁻ and to raise the mass of the argmax token (mean over the observed rows)."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for row in view.decomposition:
        change = row.get("predicted", row.get("observed"))
        mass = row.get("predicted/mass_argmax", row.get("observed/mass_argmax"))
        cell = by_step.setdefault(row["step"], {"rejected": [], "mass": []})
        if row["type"] == "rejected" and change is not None:
            cell["rejected"].append(change)
        if mass is not None:
            cell["mass"].append(mass)
    counted = [c for c in by_step.values() if c["rejected"] and c["mass"]]
    if not counted:
        return None
    squeezed = sum(np.mean(c["rejected"]) < 0 < np.mean(c["mass"]) for c in counted)
    return {"decomposed_updates": len(counted), "squeezed_updates": int(squeezed)}


def displacement(view: StageView) -> Finding | None:
    """Preference stages: chosen ends at least MIN_NATS below its value at the stage's start, in the mean, and in
    at least MIN_SHARE of the prompts. The text adds the margin over y⁻ when rejected was probed."""
    if not view.preference:
        return None
    d = view.change("chosen")
    if not moved(d, False, MIN_NATS):
        return None
    start = float(np.mean([first for first, _ in view.ends("chosen").values()]))
    values = {"chosen": mean(d), "chosen_start": start, "fell_share": share(d, False)}
    text = f"chosen ended {-mean(d):.1f} nats below its start ({start:.1f} → {start + mean(d):.1f} on average)"
    rej = view.change("rejected")
    both = sorted(set(d) & set(rej))
    if both:
        margin = float(np.mean([d[e] - rej[e] for e in both]))
        values["margin"] = margin
        text += f" while its margin over y⁻ {'grew' if margin > 0 else 'shrank'} {abs(margin):.1f}"
    hits = [v < 0 for v in d.values()]
    return finding(view, "displacement", f"{text}; {of_prompts(hits)}", share(d, False), values, PREFERENCE_LEVERS)


def hallucination(view: StageView) -> Finding | None:
    """SFT stages on chosen: other training prompts' responses (irr_train) rise by MIN_NATS in the mean and rise
    MIN_NATS more than unseen prompts' responses (irr_test; without them, the mean of the random responses), with
    at least MIN_SHARE of the prompts where irr_train rose and rose more than the comparison."""
    if not view.sft_on_chosen:
        return None
    train = view.change("irr_train")
    name, other = "unseen ones (irr_test", view.change("irr_test")
    if not other:
        per = [view.change(t) for t in NOT_LANGUAGE if view.change(t)]
        ids = set.intersection(*(set(p) for p in per)) if per else set()
        name, other = "random ones (random_*", {e: float(np.mean([p[e] for p in per])) for e in ids}
    ids = sorted(set(train) & set(other))
    if not ids or not moved(train, True, MIN_NATS):
        return None
    gap = float(np.mean([train[e] - other[e] for e in ids]))
    hits = [train[e] > max(other[e], 0) for e in ids]
    if gap < MIN_NATS or np.mean(hits) < MIN_SHARE:
        return None
    values = {"irr_train": mean(train), "compared": name.split("(")[1], "compared_change": mean(other), "gap": gap}
    text = (
        f"other prompts' responses (irr_train) rose {mean(train):.1f} nats on average, {gap:.1f} more than "
        f"{name}, {mean(other):+.1f}); {of_prompts(hits)}"
    )
    return finding(view, "hallucination", text, float(np.mean(hits)), values, SFT_LEVERS)


def peakiness(view: StageView) -> Finding | None:
    """Along chosen: the argmax's per-token mass (the geometric mean over chosen's positions of max_v π_t(v), exp of
    the argmax row's logp_mean) rises by MIN_MASS, ‖A‖_F rises by MIN_A_NORM of its start, the per-token entropy
    H(π_t) falls by MIN_ENTROPY -- each in the mean and for at least MIN_SHARE of the prompts. It fires when at
    least two of the signals the rows have pass (all of them when fewer than two were probed); its share is that of
    the prompts where every passing signal moved the peakier way. These are the full-vocabulary entropy and the
    top-1 mass; the top-k versions are `over_optimisation`'s."""
    signals: dict[str, tuple[dict[str, float], bool, float, str]] = {}
    ends = view.ends("argmax", "logp_mean")
    if ends:
        mass = np.exp(np.array(list(ends.values())))  # (E, 2): the first and last round's mass per prompt
        d = dict(zip(ends, mass[:, 1] - mass[:, 0]))
        text = f"the argmax's per-token mass rose {mass[:, 0].mean():.2f} → {mass[:, 1].mean():.2f}"
        signals["argmax_mass"] = (d, True, MIN_MASS, text)
    ends = view.ends("chosen", "a_norm")
    if ends:
        d = {e: (b - a) / a for e, (a, b) in ends.items()}
        signals["a_norm"] = (d, True, MIN_A_NORM, f"‖A‖_F rose {100 * mean(d):.1f}%")
    d = view.change("chosen", "entropy")
    if d:
        signals["entropy"] = (d, False, MIN_ENTROPY, f"the entropy fell {-mean(d):.2f} nat/token")
    signals = {k: v for k, v in signals.items() if v[0]}
    passed = {k: v for k, v in signals.items() if moved(v[0], v[1], v[2])}
    if not signals or len(passed) < min(2, len(signals)):
        return None
    ids = sorted(set.intersection(*(set(v[0]) for v in passed.values())))
    if not ids:
        return None
    hits = [all((v[0][e] > 0) if v[1] else (v[0][e] < 0) for v in passed.values()) for e in ids]
    values = {k: mean(v[0]) for k, v in signals.items()} | {"passed": sorted(passed)}
    text = "along chosen " + join([v[3] for v in passed.values()]) + f"; {of_prompts(hits)}"
    levers = PREFERENCE_LEVERS if view.preference else SFT_LEVERS
    return finding(view, "peakiness", text, float(np.mean(hits)), values, levers)


def over_optimisation(view: StageView) -> Finding | None:
    """Along chosen, Shi et al.'s two indicators together: the entropy of π_t renormalised over its TOP_K most
    likely tokens (`topk_entropy`, per-token mean) falls by MIN_ENTROPY and the mass of those tokens
    (`topk_mass`) falls by MIN_MASS -- each in the mean and for at least MIN_SHARE of the prompts, and both on at
    least MIN_SHARE of the prompts (its share)."""
    entropy, mass = view.change("chosen", "topk_entropy"), view.change("chosen", "topk_mass")
    if not (moved(entropy, False, MIN_ENTROPY) and moved(mass, False, MIN_MASS)):
        return None
    ids = sorted(set(entropy) & set(mass))
    hits = [entropy[e] < 0 and mass[e] < 0 for e in ids]
    if np.mean(hits) < MIN_SHARE:
        return None
    start = {e: a for e, (a, _) in view.ends("chosen", "topk_mass").items()}
    values = {"topk_entropy": mean(entropy), "topk_mass": mean(mass), "topk_mass_start": mean(start)}
    text = (
        f"along chosen the top-{TOP_K} entropy fell {-mean(entropy):.2f} nat/token and the top-{TOP_K} mass fell "
        f"{mean(start):.2f} → {mean(start) + mean(mass):.2f}; {of_prompts(hits)}"
    )
    levers = ["stop earlier or lower the learning rate: the chosen likelihood has stopped buying quality"]
    levers += PREFERENCE_LEVERS[3:] if view.preference else []
    return finding(view, "over_optimisation", text, float(np.mean(hits)), values, levers)


RULES = (squeezing, displacement, hallucination, peakiness, over_optimisation, *RL_RULES)


def stage_views(run: Run) -> list[StageView]:
    """Each probed stage, in order, with what its config says it trains."""
    configs = {s.name: s for s in run.config.stages}
    tables = {key: probe_table(run, key) for key in COLUMNS}
    views = []
    for start, end, name in stage_spans(run):
        cfg = configs.get(name)
        loss = cfg.loss.name if cfg is not None else ""
        try:
            preference = bool(loss) and get_loss(loss).needs_rejected
        except LdynError:  # a loss registered in another process: what it trains is unknown
            loss, preference = "", False
        sampled = bool(loss) and get_loss(loss).sampled
        on_chosen = bool(loss) and not preference and not sampled and (cfg.extend or cfg.target == "chosen")
        rows = [r for r in run.decomposition if r.get("stage") == name]
        metrics = [m for m in run.metrics if m.get("stage") == name]
        views.append(StageView(name, loss, preference, on_chosen, start, end, tables, rows, sampled, metrics))
    return views


def diagnose(run: Run) -> list[Finding]:
    """Every finding of every stage, stage by stage in the rules' order."""
    return [f for view in stage_views(run) for rule in RULES if (f := rule(view)) is not None]


def diagnose_paths(paths: list[str | Path]) -> dict[str, list[Finding]]:
    """Run label -> its findings, for each run directory (two runs of the same name: the second by its path)."""
    out: dict[str, list[Finding]] = {}
    for path in paths:
        run = load_run(path)
        out[run.label if run.label not in out else str(run.path)] = diagnose(run)
    return out


def format_findings(findings: list[Finding]) -> list[str]:
    """Lines for the console: each finding's title and text, its mechanism and its levers; "nothing notable" when
    there are none."""
    if not findings:
        return ["nothing notable"]
    lines = []
    for f in findings:
        lines += [f"{f.title}: {f.text}", f"    why: {f.mechanism}"]
        lines += [f"    lever: {lever}" for lever in f.levers]
    return lines


def changed_findings(before: list[Finding], after: list[Finding]) -> list[Finding]:
    """The findings of `after` that are new, or whose text changed, since `before` (for live printing at probe
    rounds)."""
    seen = {(f.key, f.stage): f.text for f in before}
    return [f for f in after if seen.get((f.key, f.stage)) != f.text]
