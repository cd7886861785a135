"""The decomposition of updates, from any trainer: two calls around its optimizer step.

For one update, two plain calls: `begin_update` before the step keeps θ_t and, when the update batch and its loss
are known, the directions g⁺ and g⁻ (`akg.update_directions`); `decompose_update` after it gives one row per
observed (prompt, response type) with the observed change and the first-order predictions (`akg.decompose`),
under their final column names. Without the update batch only the real step is predicted.

For a training run, a `Decomposer`: it owns the method, the observed set and everything reused from one update to
the next (the pending start, the observed forward at θ_{t+1} that is the next update's forward at θ, the
parameter-sized buffers), so a trainer's callback calls `begin`, optionally hands over the step's own graph and
gradient (`directions_from_step`, `directions_from_gradient`), and `finish` -- with science arguments only.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from ldyn.data.tokenize import collate
from ldyn.dynamics import readout
from ldyn.dynamics.akg import UpdateDirections, decompose, parameters, update_directions
from ldyn.dynamics.differences import parameter_buffer
from ldyn.dynamics.probing import ProbeItem, whole_prompt_batches
from ldyn.dynamics.readout_capture import recorded
from ldyn.logprobs.choose import rows_logits, shares_prompts
from ldyn.logprobs.shared_prompt import SharedRows
from ldyn.logprobs.tokens import Scored
from ldyn.losses import LossConfig, LossSpec, PairLogps
from ldyn.models.modes import measurement_mode

METHODS = ("jvp", "central", "one_sided", "readout")
# The most logits an observed forward keeps for the next update (`ObservedForward`): SmolLM2's 49,152-word
# vocabulary makes 1 GiB about 5,400 observed tokens (4 probe prompts with all 13 response types is ~8,000).
KEEP_BYTES = 2**30


@dataclass
class UpdateStart:
    """What the decomposition keeps from before an update."""

    theta: dict[str, torch.Tensor]  # θ_t, cloned
    lr: float  # η of the update (the SGD-kernel predictions use it)
    directions: UpdateDirections | None  # g⁺ and g⁻ of the update batch; None when the batch is not known


def begin_update(
    model,
    lr: float,
    loss: LossSpec | None = None,
    loss_cfg: LossConfig | None = None,
    examples=(),
    pad_id: int = 0,
    reference: PairLogps | None = None,
) -> UpdateStart:
    """Before the optimizer step: θ_t, and the loss directions of the update's `examples` (`TrainExample`s: prompt,
    chosen, rejected token ids) under `loss` when they are given (`update_directions`). `reference` holds the
    reference log-probs of the examples for losses that need one. A trainer that can hand over its step's own graph
    and gradient leaves `examples` out and sets `start.directions` itself, which saves the update batch's forward:
    `UpdateDirections.from_step` between the step's forward and backward, then `from_gradient` after the backward
    (a `Decomposer` does this for a callback)."""
    directions = _directions(model, loss, loss_cfg, examples, pad_id, reference)
    return UpdateStart({k: v.clone() for k, v in parameters(model).items()}, lr, directions)


def decompose_update(
    model,
    start: UpdateStart,
    items: list[ProbeItem],
    pad_id: int,
    *,
    batch_tokens: int = 1024,
    predict: bool = True,
    method: str = "jvp",
) -> list[dict]:
    """After the optimizer step: one row per observed (prompt, response type) with the observed change and, when
    `predict`, the first-order predictions along the real step ("predicted") and the SGD kernel's y⁺ and y⁻ parts
    ("sgd_positive", "sgd_negative"), the mass split, LBK ("observed/lbk") and SignDelta ("observed/sign_delta").
    `method`: "jvp" (forward-mode), "central" (central differences, `central_difference`) or "one_sided" (the SGD
    kernel's parts by `one_sided_difference`, the real step central)."""
    return _decompose_rows(model, start, items, pad_id, batch_tokens=batch_tokens, predict=predict, method=method)[0]


class Decomposer:
    """Decomposes updates one after another for a trainer's callback: `begin(model, lr, ...)` before the optimizer
    step, `finish(model)` after it, which returns the rows of `decompose_update`.

    `items`: the observed (prompt, response type)s; `method`, `predict`, `batch_tokens` as for `decompose_update`.
    `every_update`: the caller decomposes every update, so the observed forward at θ_{t+1} is kept (within
    `KEEP_BYTES`) as the next update's forward at θ -- used only when the parameters are still exactly θ_{t+1} --
    and the parameter-sized buffers are written in place from one update to the next (fresh ones cost a pass of
    page faults each on a CPU, ~0.3 s for SmolLM2).
    """

    def __init__(
        self,
        items: list[ProbeItem],
        pad_id: int,
        *,
        method: str = "jvp",
        predict: bool = True,
        batch_tokens: int = 1024,
        every_update: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.items, self.pad_id, self.method, self.predict = items, pad_id, method, predict
        self.batch_tokens, self.every_update = batch_tokens, every_update
        self.pending: UpdateStart | None = None  # between `begin` and `finish`
        self._kept: ObservedForward | readout.KeptForward | None = None  # the last observed forward, at θ_{t+1}
        self._before: ObservedForward | None = None  # the pending update's forward at θ_t, when it was kept
        # parameter-sized buffers kept from one update to the next (every_update), made when first needed
        self._shifted: dict | None = None  # the difference methods' shifted parameter sets, in turn
        self._negative: dict | None = None  # g⁻ = ∇L − g⁺ from the step's gradient
        self._recording: ExitStack | None = None  # the readout's hooks on the training forward (`record_step`)
        self._forwards: list[dict] = []

    def begin(
        self,
        model,
        lr: float,
        *,
        loss: LossSpec | None = None,
        loss_cfg: LossConfig | None = None,
        examples=(),
        reference: PairLogps | None = None,
    ) -> UpdateStart | readout.ReadoutStart:
        """Before the optimizer step (`begin_update`); without `examples`, the directions may come from the step
        itself (`directions_from_step`, `directions_from_gradient`) or not at all (only the real step predicted).
        `method="readout"`: the observed and update batches' forwards (`readout.begin`); without `examples`, only
        the real step's head term is predicted."""
        if self.method == "readout":
            kept, self._kept = self._kept, None
            self.pending = readout.begin(
                model, lr, self.items, self.pad_id, loss=loss, loss_cfg=loss_cfg, examples=examples,
                reference=reference, batch_tokens=self.batch_tokens, kept=kept,
            )  # fmt: skip
            return self.pending
        directions = _directions(model, loss, loss_cfg, examples, self.pad_id, reference)
        now = parameters(model)
        kept, self._kept = self._kept, None
        if (
            kept is not None
            and kept.theta.keys() == now.keys()
            and all(torch.equal(kept.theta[k], v) for k, v in now.items())
        ):
            self.pending, self._before = UpdateStart(kept.theta, lr, directions), kept
        else:
            self.pending, self._before = UpdateStart({k: v.clone() for k, v in now.items()}, lr, directions), None
        return self.pending

    def record_step(self, model) -> None:
        """The readout, before the training forward: record its activations (`readout_capture.recorded`) for
        `readout_from_step`, which stops recording."""
        self._recording = ExitStack()
        self._forwards = self._recording.enter_context(recorded(model))

    def readout_from_step(self, model, loss: torch.Tensor, logps, examples) -> bool:
        """The readout, between the step's forward and its backward: the update batch's side from the step itself
        (`readout.update_from_step`); False when the step's forward cannot be read that way, and the caller then
        hands over the batch (`readout_update`)."""
        try:
            update = readout.update_from_step(model, loss, logps, list(examples), self._forwards)
        finally:
            if self._recording is not None:
                self._recording.close()
            self._recording, self._forwards = None, []
        if update is not None:
            self.pending.update = update
        return update is not None

    def readout_update(self, model, loss: LossSpec, loss_cfg: LossConfig | None, examples, reference) -> None:
        """The readout's update side from a forward of the batch of its own, at θ_t (`readout.readout_update`)."""
        with measurement_mode(model):
            self.pending.update = readout.readout_update(
                model, loss, loss_cfg or LossConfig(), list(examples), self.pad_id, reference
            )

    def directions_from_step(
        self, model, loss: torch.Tensor, logps, n_examples: int, positive: torch.Tensor | None = None
    ) -> None:
        """Between the step's forward and its backward: g⁺ (and G) from the step's own graph
        (`UpdateDirections.from_step`, `positive` naming its y⁺ rows when they are not the first n: an RL
        update's positive-advantage completions); g⁻ then comes from the step's gradient
        (`directions_from_gradient`)."""
        self.pending.directions = UpdateDirections.from_step(model, loss, logps, n_examples, positive)

    @property
    def awaiting_gradient(self) -> bool:
        directions = self.pending.directions if self.pending is not None else None
        return directions is not None and directions.awaiting_gradient

    def directions_from_gradient(self, grads: dict[str, torch.Tensor]) -> None:
        """After the step's backward: g⁻ = ∇L − g⁺ from its gradient (name -> tensor)."""
        if self.every_update and self._negative is None:
            self._negative = parameter_buffer(grads)
        self.pending.directions.from_gradient(grads, self._negative)

    def finish(self, model) -> list[dict]:
        """After the optimizer step: the rows of the pending update (`decompose_update`)."""
        start, self.pending = self.pending, None
        if self.method == "readout":
            if not self.every_update:
                return readout.finish(model, start, self.predict)
            rows, self._kept = readout.finish(model, start, self.predict, keep=True)  # the next update's θ_t
            return rows
        if self.every_update and self.method != "jvp" and self._shifted is None:  # forward-mode shifts nothing
            self._shifted = parameter_buffer(start.theta)
        rows, self._kept = _decompose_rows(
            model,
            start,
            self.items,
            self.pad_id,
            batch_tokens=self.batch_tokens,
            predict=self.predict,
            method=self.method,
            before=self._before,
            keep=self.every_update,
            shifted=self._shifted,
        )
        self._before = None
        return rows


# ------------------------------------------------------------------- what a Decomposer reuses between updates


@dataclass
class ObservedForward:
    """The observed batches' logits at θ_{t+1}, with θ_{t+1} itself: the next update's forward at θ when it starts
    from exactly these parameters (decomposing every update)."""

    theta: dict[str, torch.Tensor]  # θ_{t+1}, cloned
    items: list[list[tuple[str, str]]]  # per observed batch, its (example id, response type)s in order
    logits: list[tuple[torch.Tensor, Scored]]  # (scored-token logits, `Scored`) per observed batch, in order


# ------------------------------------------------------------------- the work


def _directions(model, loss, loss_cfg, examples, pad_id, reference) -> UpdateDirections | None:
    if loss is None or not examples:
        return None
    with measurement_mode(model):
        return update_directions(model, loss, loss_cfg or LossConfig(), list(examples), pad_id, reference)


# columns of a decomposition row, from the names `decompose` gives its outputs
COLUMNS = {
    "predicted/step": "predicted",
    "predicted/sgd_positive": "sgd_positive",
    "predicted/sgd_negative": "sgd_negative",
}


def _decompose_rows(
    model,
    start: UpdateStart,
    items: list[ProbeItem],
    pad_id: int,
    *,
    batch_tokens: int,
    predict: bool,
    method: str,
    before: ObservedForward | None = None,
    keep: bool = False,
    shifted: dict | None = None,
) -> tuple[list[dict], ObservedForward | None]:
    """`decompose_update`'s rows, reusing `before` (the observed batches' logits at θ_t, when the last update kept
    them) and the `shifted` parameter buffer; with `keep`, also the observed forward at θ_{t+1} for the next update
    (when it uses a plain forward at θ and its logits fit in `KEEP_BYTES`)."""
    if start.directions is not None and start.directions.awaiting_gradient:
        raise ValueError(
            "a direction was left to the training step's gradient: call start.directions.from_gradient first"
        )
    after = parameters(model)
    tangents = _tangents(start) if predict else {}
    shared = shares_prompts(next(model.parameters()).device)
    # whole prompts on either path: the logits' rows (responses × longest response) bound a batch's memory, and a
    # GPU's padded path, bound by kernel launches, then runs the fewest batches (the probe set by length took 3
    # where 1 holds it: 3x the forwards)
    groups = whole_prompt_batches(items, batch_tokens)
    keys = [[(it.example_id, it.type) for it in group] for group in groups]
    known = before.logits if before is not None and before.items == keys else [None] * len(groups)
    kept = [] if keep and (method != "jvp" or not tangents) else None
    rows = []
    device = next(model.parameters()).device
    for group, logits_before in zip(groups, known):
        pairs = [(it.example_id, it.prompt, it.response) for it in group]
        observed_rows = SharedRows.of(pairs) if shared else collate([p[1:] for p in pairs], pad_id).to(device)
        with measurement_mode(model):
            with torch.no_grad():
                observed = rows_logits(model, observed_rows, pad_id, after)
            if kept is not None:
                kept.append(observed)
            out = decompose(
                model,
                start.theta,
                after,
                tangents,
                observed_rows,
                pad_id,
                method,
                before=logits_before,
                observed=observed,
                buffer=shifted,
            )
        if kept is not None and sum(logits.numel() * logits.element_size() for logits, _ in kept) > KEEP_BYTES:
            kept = None
        out = {COLUMNS.get(k, k): (-start.lr * v if k in SGD_PARTS else v).tolist() for k, v in out.items()}
        for i, item in enumerate(group):
            row = {"example_id": item.example_id, "type": item.type, "lr": start.lr}
            if start.directions is not None:
                row["g_norm_sq"] = start.directions.g_norm_sq
            row |= {k: v[i] for k, v in out.items()}
            if start.directions is not None and start.directions.g_norm_sq > 0:  # LBK: ‖Δ log π‖² / (‖A‖_F² ‖G‖²)
                row["observed/lbk"] = row["observed/dlogp_sq"] / (
                    row["observed/a_norm_sq"] * start.directions.g_norm_sq
                )
            rows.append(row)
    if kept is None:
        return rows, None
    return rows, ObservedForward({k: v.clone() for k, v in after.items()}, keys, kept)


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
