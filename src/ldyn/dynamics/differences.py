"""The first-order logit change along a parameter step from plain forwards: the finite-difference twins of
forward-mode (`akg.logit_jvp`, exact), cheaper on a CPU where a forward costs a third of a JVP.

- `central_difference`: (z(θ+sv) − z(θ−sv)) / 2s, two forwards (`reflected_difference`: one, for the real step
  whose θ+v is θ_{t+1}); error O(s²‖v‖³).
- `one_sided_difference`: (z(θ+sv) − z(θ)) / s from the forward at θ the decomposition has anyway; one forward,
  error O(s‖v‖²).

Both are tested against the JVP in float64 for the order of their error (tests/test_akg.py).
"""

from __future__ import annotations

import torch

from ldyn.data.tokenize import Batch
from ldyn.logprobs.choose import rows_logits
from ldyn.logprobs.shared_prompt import SharedRows

# The SGD kernel's steps are taken at this fraction of the real step's length. Measured on SmolLM2 in fp32 (an
# Adam step of lr 1e-5): at their own length (~1/800 of it) float rounding gives ~1e-2 relative error against the
# JVP; at the real step's length the third-order term does; at 1/30 both are ~1e-4 or less.
CENTRAL_LENGTH = 1 / 30


def central_difference(
    model,
    theta: dict,
    tangent: dict,
    rows: Batch | SharedRows,
    pad_id: int = 0,
    scale: float = 1.0,
    out: dict | None = None,
) -> torch.Tensor:
    """(z(θ+sv) − z(θ−sv)) / 2s: the observed rows' first-order logit change along v from plain forwards, equal to
    J_o·v up to O(s²‖v‖³) (`logit_jvp` is its exact twin). A larger `scale` s lifts a short step out of float
    rounding (J_o·v is linear in v; the error is relative to (s‖v‖)²). `out`: a `parameter_buffer` the shifted
    parameters are written into. Along the real step, whose z(θ+v) is already known, `reflected_difference`."""
    plus = rows_logits(model, rows, pad_id, shifted(theta, tangent, scale, out))[0]
    minus = rows_logits(model, rows, pad_id, shifted(theta, tangent, -scale, out))[0]
    return plus.sub_(minus).div_(2 * scale)  # in place on the fresh `plus`: no (N, V) temporaries


def one_sided_difference(
    model,
    theta: dict,
    tangent: dict,
    rows: Batch | SharedRows,
    base: torch.Tensor,
    pad_id: int = 0,
    *,
    scale: float = 1.0,
    out: dict | None = None,
) -> torch.Tensor:
    """(z(θ+sv) − z(θ)) / s, with `base` = z(θ): one plain forward, equal to J_o·v up to O(s‖v‖²)
    (`central_difference` is second order at one more forward; `logit_jvp` is the exact twin of both)."""
    plus = rows_logits(model, rows, pad_id, shifted(theta, tangent, scale, out))[0]
    return plus.sub_(base).div_(scale)  # in place on the fresh `plus`: no (N, V) temporaries


def reflected_difference(
    model, theta: dict, theta_after: dict, rows: Batch | SharedRows, plus: torch.Tensor, pad_id: int, out: dict
) -> torch.Tensor:
    """`central_difference` along the real step v = θ_after − θ, with `plus` = z(θ_after) known (the observed
    forward; left as it is), without forming v: θ − v = 2θ − θ_after, written into `out` (a `parameter_buffer`)."""
    for k in theta:  # lerp(a, b, 2) = a + 2(b − a)
        torch.lerp(theta_after[k], theta[k], 2.0, out=out[k])
    minus = rows_logits(model, rows, pad_id, out)[0]
    return minus.neg_().add_(plus).div_(2)


def parameter_buffer(theta: dict) -> dict:
    """One tensor like each parameter, for the shifted parameter sets of a decomposition to be written into in turn:
    on a CPU a fresh 0.5 GB set (SmolLM2) per forward cost a pass over newly faulted pages each time."""
    return {k: torch.empty_like(v) for k, v in theta.items()}


def shifted(theta: dict, tangent: dict, scale: float, out: dict | None = None) -> dict:
    """θ + scale·v over the parameters of `tangent`: into `out` (a `parameter_buffer`) when given, else new tensors."""
    names = list(tangent)
    if out is None:
        return dict(zip(names, torch._foreach_add([theta[k] for k in names], [tangent[k] for k in names], alpha=scale)))
    for k in names:
        torch.add(theta[k], tangent[k], alpha=scale, out=out[k])
    return {k: out[k] for k in names}


def step_length(theta: dict, theta_after: dict, out: dict) -> float:
    """‖θ_after − θ‖, the step formed in `out` (a `parameter_buffer`) for its norm only."""
    return norm({k: torch.sub(theta_after[k], theta[k], out=out[k]) for k in theta})


def norm(tangent: dict) -> float:
    """‖v‖ over every parameter: each tensor's norm in its own precision, in one multi-tensor kernel, combined in
    float64 with one synchronisation (it sets a difference's step length s, which cancels exactly: s shifts θ and
    divides the difference, so its rounding does not reach the result). A float64 norm per tensor took 0.1-0.4 s
    for SmolLM2 on this CPU, ~0.04 s this way, and a GPU waits once instead of once per tensor."""
    if not tangent:
        return 0.0
    return float(torch.stack(torch._foreach_norm(list(tangent.values()))).double().pow(2).sum().sqrt())
