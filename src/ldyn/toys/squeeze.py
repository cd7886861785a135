"""The squeezing effect on a linear softmax head: one update, the paper's five cases, and a checker (paper §3.4).

The model is z = Wᵀx, π = softmax(z). One step moves W along the gradient of the registered SFT loss −log π(y):
down it for a positive label (W ← W − η⁺ ∇(−log π(y⁺))), up it for a negative one (W ← W + η⁻ ∇(−log π(ȳ))).
For a negative step alone the logits move by Δz = η'(π − e_ȳ) with η' = η‖x‖², so π'_i = π_i e^{Δz_i} / Z and

    1. π(ȳ) falls;
    2. π(y*) rises, y* = argmax_{i≠ȳ} π(i): the released mass is squeezed into the most likely label;
    3. a label i ≠ ȳ rises exactly when π_i > log Z / η' (rich get richer, poor get poorer).

`notebook_cases` rebuilds the authors' notebook (seed 10086, same draws in the same order); `check` tests the
three statements, or any other, on random heads of many shapes and temperatures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import log_softmax, logsumexp, softmax

from ldyn.toys import classification_loss

NOTEBOOK_SEED = 10086


@dataclass
class Update:
    """One step on a linear softmax head; `before` and `after` are π over the labels."""

    name: str
    title: str
    before: np.ndarray
    after: np.ndarray
    logits_before: np.ndarray
    logits_after: np.ndarray
    plus: int | None
    minus: int | None
    eta_prime: float  # η⁻‖x‖², the negative step's size in logit space

    @property
    def rising(self) -> int:
        return int((self.after > self.before).sum())


def nll_gradient(w: torch.Tensor, x: torch.Tensor, label: int) -> torch.Tensor:
    """∇_W of the registered SFT loss −log π(label | x) for the head z = Wᵀx, by autograd."""
    w = w.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(classification_loss((x @ w)[None], torch.tensor([label])), w)
    return grad


def step(
    name: str,
    title: str,
    w: np.ndarray,
    x: np.ndarray,
    *,
    plus: int | None = None,
    plus_lr: float = 0.0,
    minus: int | None = None,
    minus_lr: float = 0.0,
) -> Update:
    """W₁ = W − η⁺ ∇(−log π(y⁺)) + η⁻ ∇(−log π(ȳ)), both gradients taken at W; x of shape (d,), W (d, V)."""
    w0, xt = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    w1 = w0.clone()
    if plus is not None:
        w1 -= plus_lr * nll_gradient(w0, xt, plus)
    if minus is not None:
        w1 += minus_lr * nll_gradient(w0, xt, minus)
    z0, z1 = xt @ w0, xt @ w1
    p0, p1 = z0.softmax(-1).numpy(), z1.softmax(-1).numpy()
    return Update(name, title, p0, p1, z0.numpy(), z1.numpy(), plus, minus, minus_lr * float(xt @ xt))


def notebook_cases(seed: int = NOTEBOOK_SEED) -> list[Update]:
    """The five cases of the authors' `squeeze_effect.ipynb`, drawing the same random numbers in the same order."""
    rng = np.random.RandomState(seed)  # the legacy generator behind np.random.seed
    labels, dim = 50, 4
    x = rng.randn(dim, 1)
    w_uniform = rng.randn(dim, labels)
    w_flat = np.ones((dim, labels)) + rng.randn(dim, labels) * 0.05
    w_peaky = rng.randn(dim, labels)  # then one multi-label step (lr 1) towards classes 5..12
    target = np.zeros(labels)
    target[5:13] = 1
    z = (x.T @ w_peaky).ravel()
    w_peaky = w_peaky - np.outer(x, softmax(z) - target)
    cases = [
        step("A", "A: positive gradient on y=21", w_uniform, x, plus=21, plus_lr=0.5),
        step("B", "B: negative gradient, flat π, ȳ=42", w_flat, x, minus=42, minus_lr=0.3),
        step("C", "C: negative gradient on a peak label, ȳ=11", w_peaky, x, minus=11, minus_lr=0.5),
        step(
            "D",
            "D: negative on a valley (ȳ=42) + positive on 25",
            w_peaky,
            x,
            plus=25,
            plus_lr=0.5,
            minus=42,
            minus_lr=0.5,
        ),
    ]
    x_large = rng.randn(50, 1)
    w_large = rng.randn(50, 1000) * 0.5
    cases.append(step("E", "E: 1,000 labels, negative gradient on ȳ=100", w_large, x_large, minus=100, minus_lr=1.0))
    return cases


# --- the checker -------------------------------------------------------------------------------------------------


def log_change(u: Update) -> np.ndarray:
    """log π'_i − log π_i from the logits (exact, and resolvable far below float64's resolution of π itself)."""
    return log_softmax(u.logits_after) - log_softmax(u.logits_before)


RESOLUTION = 1e-12  # a log-prob change smaller than this is below float64's resolution near π = 1: undecided


def _sign(change: float, want_positive: bool) -> bool | None:
    if abs(change) < RESOLUTION:
        return None
    return bool((change > 0) == want_positive)


def target_falls(u: Update) -> bool | None:
    return _sign(log_change(u)[u.minus], want_positive=False)


def runner_up_rises(u: Update) -> bool | None:
    others = np.delete(np.arange(len(u.before)), u.minus)
    return _sign(log_change(u)[others[u.before[others].argmax()]], want_positive=True)


def rises_above_threshold(u: Update, margin: float = 1e-9) -> bool | None:
    """For i ≠ ȳ: π'_i > π_i ⇔ π_i > log Z / η', with Z = Σ_j π_j e^{Δz_j}. Labels within `margin` (in logit
    units) of the threshold are too close to call in floating point and are skipped."""
    dz = u.logits_after - u.logits_before
    log_z = logsumexp(dz, b=u.before)
    gap = u.eta_prime * u.before - log_z
    keep = np.abs(gap) > margin
    keep[u.minus] = False
    if not keep.any():
        return None
    return bool(np.array_equal(log_change(u)[keep] > 0, u.before[keep] > log_z / u.eta_prime))


STATEMENTS = {
    "target_falls": target_falls,
    "runner_up_rises": runner_up_rises,
    "rises_above_threshold": rises_above_threshold,
}


def random_update(rng: np.random.Generator) -> Update:
    """A negative step on a random head: 2–1,000 labels, 1–64 input dimensions, temperatures from flat to peaky,
    ȳ anywhere from the argmax to the deepest valley, η from 10⁻³ to 10."""
    labels, dim = int(rng.integers(2, 1001)), int(rng.integers(1, 65))
    x = rng.standard_normal(dim)
    w = rng.standard_normal((dim, labels)) * math.exp(rng.uniform(math.log(0.05), math.log(5.0)))
    return step("random", "", w, x, minus=int(rng.integers(labels)), minus_lr=math.exp(rng.uniform(-7, 2.3)))


@dataclass
class CheckResult:
    statement: str
    checked: int
    violations: int
    first_violation: int | None  # index of the first failing instance

    @property
    def holds(self) -> bool:
        return self.checked > 0 and self.violations == 0


def check(statements: dict | None = None, n: int = 1000, seed: int = 0) -> list[CheckResult]:
    """Test each statement (Update -> bool, or None when it cannot be decided) on n random negative steps."""
    statements = STATEMENTS if statements is None else statements
    rng = np.random.default_rng(seed)
    updates = [random_update(rng) for _ in range(n)]
    results = []
    for name, statement in statements.items():
        verdicts = [statement(u) for u in updates]
        bad = [i for i, v in enumerate(verdicts) if v is False]
        results.append(CheckResult(name, sum(v is not None for v in verdicts), len(bad), bad[0] if bad else None))
    return results


# --- the command ---------------------------------------------------------------------------------------------------


def case_summary(u: Update) -> dict:
    """The numbers the paper quotes for a case: the updated labels and the argmax, before → after."""
    top = int(u.before.argmax())
    row = {
        "case": u.name,
        "title": u.title,
        "labels": len(u.before),
        "rising": u.rising,
        "argmax": top,
        "argmax_before": float(u.before[top]),
        "argmax_after": float(u.after[top]),
    }
    for key, index in (("minus", u.minus), ("plus", u.plus)):
        if index is not None:
            row |= {key: index, f"{key}_before": float(u.before[index]), f"{key}_after": float(u.after[index])}
    return row


def run(out, n_check: int = 1000, seed: int = 0) -> dict:
    """Draw the five notebook cases into out/squeeze.png, check the three statements on n_check random heads, and
    write every number to out/squeeze.json."""
    import json
    from pathlib import Path

    import matplotlib.pyplot as plt

    from ldyn.toys.figures import squeeze_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = notebook_cases()
    figure = squeeze_figure(cases)
    figure.savefig(out / "squeeze.png", dpi=130)
    plt.close(figure)
    summary = {
        "cases": [case_summary(u) for u in cases],
        "check": [vars(r) | {"holds": r.holds} for r in check(n=n_check, seed=seed)],
        "check_instances": n_check,
        "check_seed": seed,
    }
    (out / "squeeze.json").write_text(json.dumps(summary, indent=1))
    return summary


def summary_lines(summary: dict) -> list[str]:
    """What `ldyn toy squeeze` prints: each case's moved probabilities, then each statement's check."""
    lines = []
    for c in summary["cases"]:
        moved = ", ".join(
            f"π({c[k]}) {c[k + '_before']:.3g} → {c[k + '_after']:.3g}" for k in ("minus", "plus") if k in c
        )
        lines.append(
            f"{c['title']}: {moved}; argmax {c['argmax']} {c['argmax_before']:.3g} → "
            f"{c['argmax_after']:.3g}; {c['rising']}/{c['labels']} labels rise"
        )
    for r in summary["check"]:
        lines.append(
            f"{r['statement']}: {'holds' if r['holds'] else 'FAILS'} on {r['checked']} random heads "
            f"({r['violations']} violations)"
        )
    return lines
