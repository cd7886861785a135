"""The decomposition of one update, from any trainer: two calls around its optimizer step.

`begin_update` before the step keeps θ_t and, when the update batch and its loss are known, the directions g⁺ and
g⁻ (`akg.update_directions`); `decompose_update` after it gives one row per observed (prompt, response type) with
the observed change and the first-order predictions (`akg.decompose`), under their final column names. Without
the update batch only the real step is predicted. Decomposing every update, the observed forward at θ_{t+1} is the
next update's forward at θ: `decompose_update(keep=True)` keeps it (`ObservedForward`) and `begin_update(previous=)`
takes it when the parameters are still exactly θ_{t+1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ldyn.data.tokenize import collate
from ldyn.dynamics.akg import UpdateDirections, decompose, parameters, update_directions
from ldyn.dynamics.differences import parameter_buffer
from ldyn.dynamics.probing import ProbeItem, whole_prompt_batches
from ldyn.logprobs.choose import rows_logits, shares_prompts
from ldyn.logprobs.shared_prompt import SharedRows
from ldyn.logprobs.tokens import Scored
from ldyn.losses import LossConfig, LossSpec, PairLogps
from ldyn.models.modes import measurement_mode

# The most logits an observed forward keeps for the next update (`ObservedForward`): SmolLM2's 49,152-word
# vocabulary makes 1 GiB about 5,400 observed tokens (4 probe prompts with all 13 response types is ~8,000).
KEEP_BYTES = 2**30


@dataclass
class ObservedForward:
    """The observed batches' logits at θ_{t+1}, with θ_{t+1} itself: the next update's forward at θ when it starts
    from exactly these parameters (decomposing every update)."""

    theta: dict[str, torch.Tensor]  # θ_{t+1}, cloned
    items: list[list[tuple[str, str]]]  # per observed batch, its (example id, response type)s in order
    logits: list[tuple[torch.Tensor, Scored]]  # (scored-token logits, `Scored`) per observed batch, in order


@dataclass
class Workspace:
    """Parameter-sized buffers a decomposition writes into, kept from one update to the next by a caller that
    decomposes every update: on a CPU fresh ones cost a pass of page faults each time (~0.3 s each for SmolLM2)."""

    shifted: dict[str, torch.Tensor]  # the difference methods' shifted parameter sets, in turn
    negative: dict[str, torch.Tensor]  # g⁻ = ∇L − g⁺, from the training step's gradient

    @classmethod
    def like(cls, theta: dict[str, torch.Tensor]) -> Workspace:
        return cls(parameter_buffer(theta), parameter_buffer(theta))


@dataclass
class UpdateStart:
    """What the decomposition keeps from before an update."""

    theta: dict[str, torch.Tensor]  # θ_t, cloned
    lr: float  # η of the update (the SGD-kernel predictions use it)
    directions: UpdateDirections | None  # g⁺ and g⁻ of the update batch; None when the batch is not known
    before: ObservedForward | None = None  # the observed batches' logits at θ_t, when a forward there was kept
    observed: ObservedForward | None = None  # set by `decompose_update(keep=True)`: for the next update's start
    workspace: Workspace | None = None  # buffers to write into instead of new ones


def begin_update(
    model,
    lr: float,
    loss: LossSpec | None = None,
    loss_cfg: LossConfig | None = None,
    examples=(),
    pad_id: int = 0,
    reference: PairLogps | None = None,
    previous: ObservedForward | None = None,
    workspace: Workspace | None = None,
) -> UpdateStart:
    """Before the optimizer step: θ_t, and the loss directions of the update's `examples` (`TrainExample`s: prompt,
    chosen, rejected token ids) under `loss` when they are given (`update_directions`). `reference` holds the
    reference log-probs of the examples for losses that need one. A trainer that can hand over its step's own graph
    and gradient leaves `examples` out and sets `start.directions` itself, which saves the update batch's forward:
    `UpdateDirections.from_step` between the step's forward and backward, then `from_gradient` after the backward.
    `previous`: the last decomposed update's `ObservedForward`; used (its θ and its logits) only when the model's
    parameters are exactly its θ, i.e. nothing moved them since. `workspace`: buffers kept by the caller across
    updates (`Workspace.like`)."""
    directions = None
    if loss is not None and examples:
        with measurement_mode(model):
            directions = update_directions(model, loss, loss_cfg or LossConfig(), list(examples), pad_id, reference)
    now = parameters(model)
    if (
        previous is not None
        and previous.theta.keys() == now.keys()
        and all(torch.equal(previous.theta[k], v) for k, v in now.items())
    ):
        return UpdateStart(previous.theta, lr, directions, before=previous, workspace=workspace)
    return UpdateStart({k: v.clone() for k, v in now.items()}, lr, directions, workspace=workspace)


# columns of a decomposition row, from the names `decompose` gives its outputs
COLUMNS = {"predicted/step": "predicted", "predicted/sgd_positive": "sgd_positive",
           "predicted/sgd_negative": "sgd_negative"}  # fmt: skip


def decompose_update(
    model,
    start: UpdateStart,
    items: list[ProbeItem],
    pad_id: int,
    *,
    batch_tokens: int = 1024,
    predict: bool = True,
    method: str = "jvp",
    keep: bool = False,
) -> list[dict]:
    """After the optimizer step: one row per observed (prompt, response type) with the observed change and, when
    `predict`, the first-order predictions along the real step ("predicted") and the SGD kernel's y⁺ and y⁻ parts
    ("sgd_positive", "sgd_negative"), the mass split, LBK ("observed/lbk") and SignDelta ("observed/sign_delta").
    `method`: "jvp" (forward-mode), "central" (central differences, `central_difference`) or "one_sided" (the SGD
    kernel's parts by `one_sided_difference`, the real step central). `keep`: leave the observed forward at θ_{t+1}
    in `start.observed` for the next update's `begin_update(previous=)` (when it uses a plain forward at θ and its
    logits fit in `KEEP_BYTES`)."""
    if start.directions is not None and start.directions.awaiting_gradient:
        raise ValueError("a direction was left to the training step's gradient: call start.directions.from_gradient "
                         "first")  # fmt: skip
    after = parameters(model)
    tangents = _tangents(start) if predict else {}
    shared = shares_prompts(next(model.parameters()).device)
    # whole prompts on either path: the logits' rows (responses × longest response) bound a batch's memory, and a
    # GPU's padded path, bound by kernel launches, then runs the fewest batches (the probe set by length took 3
    # where 1 holds it: 3x the forwards)
    groups = whole_prompt_batches(items, batch_tokens)
    keys = [[(it.example_id, it.type) for it in group] for group in groups]
    before = start.before.logits if start.before is not None and start.before.items == keys else [None] * len(groups)
    kept = [] if keep and (method != "jvp" or not tangents) else None
    rows = []
    for group, logits_before in zip(groups, before):
        with measurement_mode(model):
            out = _decompose_group(model, start, after, tangents, group, pad_id, shared, method, logits_before, kept)
        if kept is not None and sum(logits.numel() * logits.element_size() for logits, _ in kept) > KEEP_BYTES:
            kept = None
        out = {COLUMNS.get(k, k): (-start.lr * v if k in SGD_PARTS else v).tolist() for k, v in out.items()}
        for i, item in enumerate(group):
            row = {"example_id": item.example_id, "type": item.type, "lr": start.lr}
            if start.directions is not None:
                row["g_norm_sq"] = start.directions.g_norm_sq
            row |= {k: v[i] for k, v in out.items()}
            if start.directions is not None:  # LBK: ‖Δ log π‖² / (‖A‖_F² ‖G‖²)
                row["observed/lbk"] = row["observed/dlogp_sq"] / (
                    row["observed/a_norm_sq"] * start.directions.g_norm_sq
                )
            rows.append(row)
    if kept is not None:
        start.observed = ObservedForward({k: v.clone() for k, v in after.items()}, keys, kept)
    return rows


def _tangents(start: UpdateStart) -> dict[str, dict | None]:
    """The parameter steps to predict along: the real one (None: `decompose` forms θ_{t+1} − θ_t only where it needs
    it), and g⁺, g⁻ when the directions are known. The SGD kernel's steps are −η g±, but the first-order change is
    linear in the step, so its predictions along g± are scaled by −η afterwards (`SGD_PARTS`) rather than every
    parameter before."""
    tangents = {"step": None}
    if start.directions is not None:
        parts = {"sgd_positive": start.directions.positive, "sgd_negative": start.directions.negative}
        tangents |= {name: g for name, g in parts.items() if g is not None}
    return tangents


# the predictions made along g± (`_tangents`), to be scaled by −η: the SGD kernel's steps
SGD_PARTS = ("predicted/sgd_positive", "predicted/sgd_negative")


def _decompose_group(model, start: UpdateStart, after: dict, tangents: dict, group: list[ProbeItem], pad_id: int,
                     shared: bool, method: str, before: tuple | None, kept: list | None) -> dict:  # fmt: skip
    pairs = [(it.example_id, it.prompt, it.response) for it in group]
    device = next(model.parameters()).device
    rows = SharedRows.of(pairs) if shared else collate([p[1:] for p in pairs], pad_id).to(device)
    with torch.no_grad():
        observed = rows_logits(model, rows, pad_id, after)
    if kept is not None:
        kept.append(observed)
    shifted = start.workspace.shifted if start.workspace is not None else None
    return decompose(model, start.theta, after, tangents, rows, pad_id, method, before, observed, shifted)
