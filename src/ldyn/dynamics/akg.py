"""The A·K·G decomposition: how one update moves the log-probabilities of observed responses (paper §3, Prop. 1).

    Δ log π(y | χ_o) = −η · A(χ_o) · K(χ_o, χ_u) · G(χ_u) + O(η²)

- G = ∇_z L, the gradient of the *registered* loss with respect to the update batch's logits, taken by autograd
  from the same function that trains (`loss_logit_gradient`). It is kept apart for the y⁺ rows and the y⁻ rows,
  so the positive- and negative-gradient contributions can be reported separately.
- K·G is never formed. One backward pass turns each part of G into a parameter direction g^± = J_u^±ᵀ G^±
  (`update_directions`, or `UpdateDirections.from_step` through the training step's own graph); one forward-mode
  JVP per observed batch turns a parameter step Δθ into the first-order logit change Δz_o = J_o Δθ (`logit_jvp`).
  With Δθ = −η g this is exactly −η K G; `entk.py` forms K explicitly for small models, the slow twin the tests
  compare against.
- A = I − 1πᵀ is applied analytically per token: Δ log π_v = Δz_v − Σ_w π_w Δz_w.

Two parameter steps are used: the paper's SGD kernel Δθ = −η g (η = the stage's learning rate), split into its
y⁺ and y⁻ parts, and the optimizer's real step θ_{t+1} − θ_t (Adam, RMSprop or SGD, after clipping).

Two ways to take the first-order change along a step v: forward-mode (`logit_jvp`, exact: J·v) or finite
differences (`differences.py`). The central difference (z(θ+v) − z(θ−v))/2 costs two plain forwards, one when
z(θ+v) is already known, as for the real step whose θ+v is θ_{t+1}; error O(‖v‖³), tested against the JVP in
float64. The SGD kernel's steps are evaluated at a set fraction of the real step's length and scaled back
(`CENTRAL_LENGTH`). The cheapest, `method="one_sided"`, takes the SGD kernel's two parts as (z(θ+v) − z(θ))/1 from
the forward at θ it has anyway (one forward each, error O(‖v‖²), first order in the relative error) and keeps the
real step central (a one-sided real step would be the observed change itself, and predict nothing).

Any trainer uses it through `dynamics/update.py`: `begin_update` before an optimizer step, `decompose_update`
after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ldyn.data.tokenize import Batch, collate
from ldyn.dynamics.differences import (
    CENTRAL_LENGTH,
    central_difference,
    norm,
    one_sided_difference,
    parameter_buffer,
    reflected_difference,
    step_length,
)
from ldyn.logprobs.choose import rows_logits, shares_prompts
from ldyn.logprobs.packed import packable, packed_logps
from ldyn.logprobs.padded import response_logits
from ldyn.logprobs.shared_prompt import SharedRows
from ldyn.logprobs.tokens import Scored, SeqLogps, logps_from_logits, stat_chunk
from ldyn.losses import LossConfig, LossSpec, PairLogps

TOP_K = 10  # "top-k" in the mass split: the pre-update argmax, the next TOP_K - 1 tokens, and the tail


def parameters(model) -> dict[str, torch.Tensor]:
    """The model's trainable parameters by name (tied weights appear once), detached."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def loss_logit_gradient(
    model, spec: LossSpec, cfg: LossConfig, batches: list[Batch], n: int, reference: PairLogps | None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """G = ∇_z L for the mean loss of an update, by autograd through the registered loss.

    `batches` hold the update's rows in `collate_pairs` order, in one batch or split into several (their rows
    concatenated: [0, n) are y⁺ or the SFT target, [n, 2n) are y⁻). Returns (logits, labels, G) per batch: the
    logits still attached to the graph, G of the same shape.
    """
    outs = [response_logits(model, batch) for batch in batches]
    logps = [logps_from_logits(logits, labels) for logits, labels in outs]
    policy = PairLogps.from_rows(torch.cat([lp.sum for lp in logps]), torch.cat([lp.n_tokens for lp in logps]), n)
    loss = spec.fn(policy, reference, cfg).losses.mean()
    grads = torch.autograd.grad(loss, [logits for logits, _ in outs], retain_graph=True)
    return [(logits, labels, grad) for (logits, labels), grad in zip(outs, grads)]


@dataclass
class UpdateDirections:
    positive: dict[str, torch.Tensor] | None  # g⁺ = J⁺ᵀ G⁺: the loss gradient flowing through the y⁺ (or SFT) rows
    negative: dict[str, torch.Tensor] | None  # g⁻ = J⁻ᵀ G⁻: through the y⁻ rows (None for one-sided losses)
    g_norm_sq: float  # ‖G‖_F² over every update position (the LBK normaliser)
    awaiting_gradient: bool = False  # a part still comes from the training step's own gradient (`from_gradient`)

    @classmethod
    def from_step(
        cls, model, loss: torch.Tensor, logps: SeqLogps, n: int, positive: torch.Tensor | None = None
    ) -> UpdateDirections:
        """The directions from the training step's own graph, between its forward and its backward: `loss` the
        step's mean loss, `logps` its rows' log-probs with their scored logits (`SeqLogps.logits`, rows [0, n) y⁺
        or the SFT target, [n, 2n) y⁻). G = ∂loss/∂z of those logits; for pairs g⁺ is one VJP of G's y⁺ rows
        through the step's graph (kept for the step's backward) and g⁻ is left to the step's gradient; for a
        one-sided loss g⁺ is the step's gradient itself. Against `update_directions` this saves the forward pass
        of the update batch (and for SFT its backward too).

        `positive` (a bool per row of `logps`) names the y⁺ rows instead: an RL update's completions with a
        positive advantage, whose G pushes them up, against the rest (negative advantage: pushed down; zero:
        no G), the RL counterpart of y⁺ and y⁻."""
        (grad,) = torch.autograd.grad(loss, logps.logits, retain_graph=True)
        g_norm_sq = float((grad.double() ** 2).sum())
        if positive is None and logps.sum.shape[0] == n:  # one-sided: every row is a y⁺ row
            return cls(None, None, g_norm_sq, awaiting_gradient=True)
        rows = (logps.rows < n) if positive is None else positive.to(logps.rows.device)[logps.rows]
        part = _pull_back(model, [logps.logits], [grad * rows[:, None]])
        return cls(part, None, g_norm_sq, awaiting_gradient=True)

    def from_gradient(self, gradient: dict[str, torch.Tensor], out: dict | None = None) -> None:
        """The part left to the training step: ∇_θ L, its own gradient of the same batch and loss (name -> tensor,
        zeros where a parameter got none), is g⁺ for a one-sided loss and g⁺ + g⁻ for pairs (so g⁻ = ∇_θ L − g⁺).
        Written into `out` (a `parameter_buffer`) when given, else into new tensors; either way a copy, since
        clipping scales `.grad` in place."""
        names = list(gradient if self.positive is None else self.positive)
        total = [gradient[k].detach() for k in names]
        if out is None:
            part = (
                torch._foreach_mul(total, 1.0)
                if self.positive is None
                else torch._foreach_sub(total, [self.positive[k] for k in names])
            )
        else:
            part = [out[k] for k in names]
            torch._foreach_copy_(part, total)
            if self.positive is not None:
                torch._foreach_sub_(part, [self.positive[k] for k in names])
        if self.positive is None:
            self.positive = dict(zip(names, part))
        else:
            self.negative = dict(zip(names, part))
        self.awaiting_gradient = False


def update_directions(
    model, spec: LossSpec, cfg: LossConfig, examples, pad_id: int, reference: PairLogps | None
) -> UpdateDirections:
    """∇_θ L = g⁺ + g⁻, each part from one backward pass of its rows' G through the model: the directions of an
    update batch without the training step's graph (several processes, autocast, another trainer), whose slow twin
    (G of the joint batch masked to a side's rows) the tests compare against. `UpdateDirections.from_step` takes
    them from the step itself when it can.

    Pairs on a CPU run packed, as the training step runs them (`_packed_sides_gradient`); each side's backward
    then runs through every pass. Elsewhere the y⁺ rows and the y⁻ rows run as two forward passes, so each backward
    traverses its own rows only: half the work of backpropagating a masked G through the joint batch.
    """
    device = next(model.parameters()).device
    with torch.enable_grad():
        if spec.needs_rejected and shares_prompts(device) and packable(model):  # as the training step runs pairs
            sides = _packed_sides_gradient(model, spec, cfg, examples, reference)
        else:
            rows = [[(e.prompt, e.chosen) for e in examples]]
            if spec.needs_rejected:
                rows.append([(e.prompt, e.rejected) for e in examples])
            batches = [collate(s, pad_id).to(device) for s in rows]
            sides = [[out] for out in loss_logit_gradient(model, spec, cfg, batches, len(examples), reference)]
        parts = [_pull_back(model, [z for z, _, _ in side], [g for _, _, g in side]) for side in sides]
    g_norm_sq = sum(float((grad.double() ** 2).sum()) for side in sides for _, _, grad in side)
    return UpdateDirections(parts[0], parts[1] if len(parts) > 1 else None, g_norm_sq)


def _packed_sides_gradient(
    model, spec: LossSpec, cfg: LossConfig, examples, reference: PairLogps | None
) -> list[list[tuple]]:
    """G of a pair batch packed as the training step packs it (`logprobs.packed.packed_logps`): per side (y⁺, y⁻) the
    scored logits, None and G restricted to that side's rows. A side's backward then runs through every pass (its
    rows share them with the other side's), the cost of the step's own backward."""
    n = len(examples)
    responses = [(i, e.chosen) for i, e in enumerate(examples)] + [(i, e.rejected) for i, e in enumerate(examples)]
    logps = packed_logps(model, [e.prompt for e in examples], responses)
    loss = spec.fn(PairLogps.from_rows(logps.sum, logps.n_tokens, n), reference, cfg).losses.mean()
    (grad,) = torch.autograd.grad(loss, logps.logits, retain_graph=True)
    chosen = (logps.rows < n)[:, None]
    return [[(logps.logits, None, grad * chosen)], [(logps.logits, None, grad * ~chosen)]]


def _pull_back(model, outputs: list[torch.Tensor], cotangents: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Σ J_outputᵀ·cotangent into every trainable parameter (zeros where one takes no part), the graph kept."""
    names, params = zip(*((k, p) for k, p in model.named_parameters() if p.requires_grad))
    grads = torch.autograd.grad(outputs, params, grad_outputs=cotangents, retain_graph=True, allow_unused=True)
    return {k: (torch.zeros_like(p) if g is None else g) for k, p, g in zip(names, params, grads)}


def logit_jvp(
    model, theta: dict, tangent: dict, rows: Batch | SharedRows, pad_id: int = 0
) -> tuple[torch.Tensor, Scored, torch.Tensor]:
    """(logits, scored, Δz): the observed rows' scored-token logits at θ (`rows_logits`) and their first-order
    change J_o·tangent.

    Forward-mode AD through the model, for a plain batch or for shared-prompt rows (each prompt run once, packed
    or with its change carried through its key/value cache). The math SDPA backend is forced because the fused CPU
    attention kernels have no forward-mode derivative (eager attention works as well).
    """

    def forward(params):  # forward-mode's auxiliary outputs are tensors only: `Scored`'s fields, rebuilt after
        logits, scored = rows_logits(model, rows, pad_id, params)
        return logits, (scored.targets, scored.rows, scored.columns, torch.tensor(scored.n_rows))

    with sdpa_kernel(SDPBackend.MATH):
        logits, dlogits, (targets, seq, columns, n_rows) = torch.func.jvp(forward, (theta,), (tangent,), has_aux=True)
    return logits, Scored(targets, seq, columns, int(n_rows)), dlogits


def log_prob_change(logits: torch.Tensor, dlogits: torch.Tensor) -> torch.Tensor:
    """A applied to a logit change, over the last dimension: Δ log π_v = Δz_v − Σ_w π_w Δz_w (first order)."""
    return dlogits - (logits.softmax(-1) * dlogits).sum(-1, keepdim=True)


def delta_log_prob(logits: torch.Tensor, scored: Scored, dlogits: torch.Tensor) -> torch.Tensor:
    """A applied per token: Σ_m [Δz_{m,y_m} − π_m·Δz_m], the first-order change of log π(y|x) per sequence, from
    scored-token logits (N, V) and their change."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = torch.zeros(scored.n_rows, dtype=dtype, device=logits.device)
    chunk = stat_chunk(logits.device)
    for lo in range(0, logits.shape[0], chunk):
        z, dz = logits[lo : lo + chunk].to(dtype), dlogits[lo : lo + chunk].to(dtype)
        per_token = dz.gather(-1, scored.targets[lo : lo + chunk, None]).squeeze(-1) - (z.softmax(-1) * dz).sum(-1)
        out.index_add_(0, scored.rows[lo : lo + chunk], per_token)
    return out


def change_statistics(
    logits: torch.Tensor, scored: Scored, after: torch.Tensor | None = None, dlogits: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-sequence sums, over response positions, of how the whole next-token distribution moves, from
    scored-token logits (N, V).

    Give `after` (logits after the real step: the observed change) or `dlogits` (first order: Δπ_v = π_v·Δlogπ_v).
      dlogp_target  Δ log π of the token scored                        (summed: Δ log π(y|x), observed or first order)
      mass_argmax   Δπ at each position's pre-update argmax token     (the squeezing signature: it gains)
      mass_topk     Δπ summed over the next TOP_K − 1 most likely tokens
      mass_tail     Δπ summed over all other tokens                    (= −argmax − topk: mass is conserved)
      dlogp_sq      ‖Δ log π‖² over the vocabulary (observed only)      (LBK numerator)
      dlogp_sum     Σ_v Δ log π_v (observed only)                      (SignDelta numerator)
      a_norm_sq     ‖A‖_F² = V − 2 + V‖π‖²                             (LBK denominator)
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    names = ("dlogp_target", "mass_argmax", "mass_topk", "mass_tail", "a_norm_sq") + (
        ("dlogp_sq", "dlogp_sum") if after is not None else ()
    )
    out = {k: torch.zeros(scored.n_rows, dtype=dtype, device=logits.device) for k in names}
    other = after if after is not None else dlogits
    vocab = logits.shape[-1]
    chunk = stat_chunk(logits.device)
    for lo in range(0, logits.shape[0], chunk):
        logp = logits[lo : lo + chunk].to(dtype).log_softmax(-1)
        p = logp.exp()
        if after is not None:
            dlogp = other[lo : lo + chunk].to(dtype).log_softmax(-1) - logp
            dp = dlogp.exp() * p - p  # π' − π, exact
        else:
            dlogp = log_prob_change(logp, other[lo : lo + chunk].to(dtype))
            dp = p * dlogp  # first order: Δπ_v = π_v Δ log π_v
        top = p.topk(TOP_K, dim=-1).indices
        stats = {
            "dlogp_target": dlogp.gather(-1, scored.targets[lo : lo + chunk, None]).squeeze(-1),
            "mass_argmax": dp.gather(-1, top[:, :1]).squeeze(-1),
            "mass_topk": dp.gather(-1, top[:, 1:]).sum(-1),
            "a_norm_sq": vocab - 2 + vocab * (p * p).sum(-1),
        }
        stats["mass_tail"] = dp.sum(-1) - stats["mass_argmax"] - stats["mass_topk"]
        if after is not None:
            stats |= {"dlogp_sq": (dlogp * dlogp).sum(-1), "dlogp_sum": dlogp.sum(-1)}
        for k, v in stats.items():
            out[k].index_add_(0, scored.rows[lo : lo + chunk], v)
    out["n_tokens"] = scored.n_tokens
    return out


@torch.no_grad()
def decompose(
    model,
    theta: dict,
    theta_after: dict,
    tangents: dict[str, dict | None],
    rows: Batch | SharedRows,
    pad_id: int = 0,
    method: str = "jvp",
    *,
    before: tuple | None = None,
    observed: tuple | None = None,
    buffer: dict | None = None,
) -> dict:
    """Predicted against observed, per sequence of an observed batch, for one update θ → θ_after.

    tangents: name -> parameter step; each gives `"predicted/<name>"` = first-order Δ log π(y|x_o) (none: only the
    observed quantities), by forward-mode (`method="jvp"`), by central differences (`"central"`) or with the SGD
    kernel's parts one-sided (`"one_sided"`; the real step stays central). The tangent named "step" (the real
    θ_after − θ; None stands for it: only forward-mode forms it) also gives the predicted mass split. "observed" is
    the exact change log π_{θ_after}(y|x_o) − log π_θ(y|x_o), with `"observed/<statistic>"` from `change_statistics`.
    `before` and `observed`: the rows' (logits, `Scored`) at θ and at θ_after when already computed (forward-mode
    takes the logits at θ from its own primal pass and does not need `before`). The difference methods write every
    shifted parameter set into one buffer (`buffer`, or a new `parameter_buffer`).
    """
    out = {}
    after, scored = rows_logits(model, rows, pad_id, theta_after) if observed is None else observed
    differences = method in ("central", "one_sided")
    if not tangents or differences:  # the logits before the step from a plain forward, unless already known
        logits, scored = rows_logits(model, rows, pad_id, theta) if before is None else before
    if differences and tangents and buffer is None:
        buffer = parameter_buffer(theta)
    # the real step's length: the SGD kernel's are differenced at a fraction of it
    step = step_length(theta, theta_after, buffer) if differences and "step" in tangents else 0.0
    for name, tangent in tangents.items():
        if differences and name == "step":  # θ + step is θ_after, the observed forward: only θ − step to run
            dlogits = reflected_difference(model, theta, theta_after, rows, after, pad_id, buffer)
        elif differences:
            length = norm(tangent)
            scale = CENTRAL_LENGTH * step / length if step > 0 and length > 0 else 1.0
            if method == "central":
                dlogits = central_difference(model, theta, tangent, rows, pad_id, scale=scale, out=buffer)
            else:
                dlogits = one_sided_difference(model, theta, tangent, rows, logits, pad_id, scale=scale, out=buffer)
        else:
            if tangent is None:
                tangent = {k: theta_after[k] - theta[k] for k in theta}
            logits, scored, dlogits = logit_jvp(model, theta, tangent, rows, pad_id)
        if name == "step":  # with the predicted mass split
            first_order = change_statistics(logits, scored, dlogits=dlogits)
            out[f"predicted/{name}"] = first_order["dlogp_target"]
            out |= {f"predicted/{k}": v for k, v in first_order.items() if k.startswith("mass")}
        else:
            out[f"predicted/{name}"] = delta_log_prob(logits, scored, dlogits)
    stats = change_statistics(logits, scored, after=after)
    out["observed"] = stats.pop("dlogp_target")  # log π_{θ_after}(y|x_o) − log π_θ(y|x_o), summed over tokens
    out |= {f"observed/{k}": v for k, v in stats.items()}
    # SignDelta (paper App. C, Eq. 26): the mean of Δ log π over vocabulary and tokens
    out["observed/sign_delta"] = stats["dlogp_sum"] / (stats["n_tokens"].clamp(min=1) * logits.shape[-1])
    return out
