"""The forward-only decomposition (`decompose.method=readout`): the first-order change of every observed response
from forward passes alone, after Ren et al. 2026 (Joshua-Ren/learning-dynamics-cl, `interaction/docs/ch1_ch2.md`).

At an observed token m (its target y_m, distribution π_m and the hidden state h_m entering the LM head W) and an
update token t (the loss residual G_t = ∂L/∂z_t, the hidden state h_t), with g_m = e_{y_m} − π_m:

    ch1(m, t) = ⟨g_m, G_t⟩ · ⟨h_m, h_t⟩                        the LM head's term, exact
    ch2(m, t) = ⟨Wᵀg_m, WᵀG_t⟩ · Σ_s ⟨h̃_{s,m}, h̃_{s,t}⟩         the backbone's, estimated

An SGD step −η ∇L moves the head by ΔW = −η Σ_t G_t h_tᵀ, so its logits at m by Δz_m = −η Σ_t ⟨h_m, h_t⟩ G_t, and
Δ log π(y_m) = g_m·Δz_m = −η Σ_t ch1(m, t): the head's exact first-order contribution (the head as a parameter of
its own: with tied embeddings, the shared tensor's input-side use is not in it). The backbone estimate lets every
block's projections see the same back-propagated signal WᵀG (the residual stream), each with its input h̃_s (the
output of the block's norm layers: the normalised input of its attention and of its MLP), so their eNTK is
Σ_s ⟨h̃_{s,m}, h̃_{s,t}⟩ · I and Δz_m ≈ −η W Σ_t O_{mt} WᵀG_t. Both are formed as logit changes Δz over the whole
vocabulary, so A, the y⁺/y⁻ split and the mass split are applied exactly as for the other methods.

The cost: one forward of the update batch and one of the observed batch (both at θ_t; no backward, no JVP; in ldyn's
trainer on a CPU the update batch's is the training step's own, `update_from_step`), then
matrix products of the scored tokens' sizes: (observed × update tokens × V) for ch1 and (observed × d × V) for
ch2. The real step's head term ΔW·h_m (ΔW = W_{t+1} − W_t, any optimizer) is exact and needs no update batch.

Under several processes (DDP, and FSDP or ZeRO-3, where the parameters are sharded and every forward pass is a
collective) the readout runs on every process, which all run every observed batch, in the same order, and one
forward per side of the update batch -- of their own data-parallel share of it (a process with none runs the same
forwards on a dummy row). The trained loss is the mean over processes of each one's mean, so each process's G is
divided by the number of processes; every prediction is a sum over update tokens, so each process's columns are
summed over the processes (`sum_over_ranks`), as is ‖G‖². The head's weights are taken whole (`full_weight`: an
FSDP2 DTensor's shards gathered), and FSDP2's parameters are put back in their shards after the forwards
(`reshard`), which have no backward to do it. Every process gets the same rows. In one process there is no
collective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ldyn.data.tokenize import IGNORE, Batch, collate
from ldyn.dynamics.akg import change_statistics
from ldyn.dynamics.probing import ProbeItem, whole_prompt_batches
from ldyn.dynamics.readout_capture import ReadoutForward, assemble, packed_readout_forward, readout_forward
from ldyn.dynamics.readout_projected import projected_statistics
from ldyn.logprobs.choose import shares_prompts
from ldyn.logprobs.packed import packable, packed_passes, packed_scored_logits
from ldyn.logprobs.padded import response_logits
from ldyn.logprobs.shared_prompt import SharedRows
from ldyn.logprobs.tokens import Scored, SeqLogps, stat_chunk
from ldyn.losses import LossConfig, LossSpec, PairLogps
from ldyn.models.modes import measurement_mode
from ldyn.runtime.distributed import full_weight, max_over_ranks, rank_and_world, reshard, sum_over_ranks


@dataclass
class ReadoutUpdate:
    """The update batch's side of the kernel: per scored token, G = ∂L/∂z, h, h̃, and which side it is on."""

    grad: torch.Tensor  # (L, V) G, of the update's mean loss
    hidden: torch.Tensor  # (L, d)
    streams: torch.Tensor  # (L, S·d)
    negative: torch.Tensor  # (L,) bool: a y⁻ row's token
    g_norm_sq: float  # ‖G‖_F² (the LBK normaliser)
    sides: list[ReadoutForward] = field(default_factory=list)  # the forwards of the y⁺ rows and the y⁻ rows


def packs(model) -> bool:
    """Whether the readout packs its rows (each prompt once, no padding: the CPU's layout, in one process, for a
    model that takes a packed row), else one padded batch (every process runs the same padded forwards)."""
    device = next(model.parameters()).device
    return rank_and_world()[1] == 1 and shares_prompts(device) and packable(model)


def observed_rows(model, group: list[ProbeItem], pad_id: int) -> Batch | SharedRows:
    """The observed items of one batch in the readout's layout (`packs`)."""
    if packs(model):
        return SharedRows.of([(it.example_id, it.prompt, it.response) for it in group])
    return collate([(it.prompt, it.response) for it in group], pad_id).to(next(model.parameters()).device)


def forward_of(model, rows: Batch | SharedRows) -> ReadoutForward:
    return packed_readout_forward(model, rows) if isinstance(rows, SharedRows) else readout_forward(model, rows)


def scored_logits(model, rows: Batch | SharedRows) -> torch.Tensor:
    """The scored tokens' logits of `rows`, in the order `forward_of` gives them (no hooks)."""
    if isinstance(rows, SharedRows):
        return packed_scored_logits(model, rows.prompts, rows.responses)[0]
    logits, labels = response_logits(model, rows)
    return logits[labels != IGNORE]


def update_forwards(model, spec: LossSpec, examples, pad_id: int) -> list[ReadoutForward]:
    """The update batch's forwards, one per side (y⁺ or the SFT target; y⁻ for pair losses): packed together
    (each prompt once for both its responses, then split by side) or one padded batch per side."""
    n = len(examples)
    if packs(model):
        responses = [(i, e.chosen) for i, e in enumerate(examples)]
        responses += [(i, e.rejected) for i, e in enumerate(examples)] if spec.needs_rejected else []
        both = packed_readout_forward(model, SharedRows([e.prompt for e in examples], responses))
        negative = both.scored.rows >= n
        sides = [both.subset(~negative, n)]
        return sides + ([both.subset(negative, n, first_row=n)] if spec.needs_rejected else [])
    device = next(model.parameters()).device
    sides = [[(e.prompt, e.chosen) for e in examples]]
    if spec.needs_rejected:
        sides.append([(e.prompt, e.rejected) for e in examples])
    return [readout_forward(model, collate(rows, pad_id).to(device)) for rows in sides]


def readout_update(
    model, spec: LossSpec, cfg: LossConfig, examples, pad_id: int, reference: PairLogps | None
) -> ReadoutUpdate:
    """The update batch at θ: its y⁺ rows and (for pair losses) its y⁻ rows, one forward each, and G of the mean
    loss by autograd through the registered loss from the logits alone (nothing through the model). A loss that
    needs reference log-probs and gets `reference=None` takes the policy's own (a stage's first update)."""
    device = next(model.parameters()).device
    forwards = update_forwards(model, spec, examples, pad_id)
    with torch.enable_grad():
        logits = [f.logits.detach().requires_grad_() for f in forwards]
        sums = [torch.zeros(f.scored.n_rows, dtype=z.dtype).index_add(0, f.scored.rows, token_logps(z, f.scored))
                for f, z in zip(forwards, logits)]  # fmt: skip
        counts = torch.cat([f.scored.n_tokens for f in forwards])
        if reference is None and spec.needs_reference:
            reference = PairLogps.from_rows(torch.cat(sums).detach(), counts, len(examples))
        loss = spec.fn(PairLogps.from_rows(torch.cat(sums), counts, len(examples)), reference, cfg).losses.mean()
        grads = torch.autograd.grad(loss, logits)
    negative = torch.cat([torch.full((len(f.scored.targets),), i == 1) for i, f in enumerate(forwards)])
    grad = torch.cat(grads)
    return ReadoutUpdate(
        grad,
        torch.cat([f.hidden for f in forwards]),
        torch.cat([f.streams for f in forwards]),
        negative.to(device),
        float((grad.double() ** 2).sum()),
        forwards,
    )


def update_from_step(
    model, loss: torch.Tensor, logps: SeqLogps, examples, forwards: list[dict]
) -> ReadoutUpdate | None:
    """The update batch's side from the training step itself, between its forward and its backward, which saves
    the update batch's forward: G = ∂loss/∂z of the step's scored logits by autograd (the step's graph kept for
    its own backward), h and h̃ from the step's `recorded` forwards, laid out as the trainer packs its rows
    (`packed_passes` of each example's prompt with its chosen, then its rejected: `Trainer.row_logps`). None when
    the step's forward was not that layout (a padded batch, another trainer's packing): its passes, their lengths,
    the scored tokens' rows and the head's output at the first and last of them are checked, and the caller then
    runs `readout_update`."""
    n, rows = len(examples), logps.rows
    responses = [(i, e.chosen) for i, e in enumerate(examples)]
    if logps.sum.shape[0] == 2 * n:
        responses += [(i, e.rejected) for i, e in enumerate(examples)]
    passes = packed_passes(model, [e.prompt for e in examples], responses)
    lengths = [(f["hidden"], f["streams"][0].shape[1] if f["streams"] else -1) for f in forwards]
    if len(passes) != len(forwards) or any(
        h is None or t != p.input_ids.shape[-1] for (h, t), p in zip(lengths, passes)
    ):
        return None
    logits = logps.logits.detach()
    forward = assemble(passes, forwards, logits, len(responses))
    if len(forward.hidden) != len(logits) or not torch.equal(forward.scored.rows, rows):
        return None
    ends = [0, len(logits) - 1]
    head = output_head(model).detach()
    if not torch.allclose(forward.hidden[ends] @ head.T.to(forward.hidden.dtype), logits[ends].to(forward.hidden.dtype),
                          rtol=1e-4, atol=1e-4):  # fmt: skip
        return None  # a head with a bias or a soft cap: not the logits of these hidden states
    (grad,) = torch.autograd.grad(loss, logps.logits, retain_graph=True)
    grad = grad.detach().to(forward.hidden.dtype)
    return ReadoutUpdate(grad, forward.hidden, forward.streams, rows >= n, float((grad.double() ** 2).sum()), [forward])


def idle_update(model, spec: LossSpec, pad_id: int) -> ReadoutUpdate:
    """A process with no update example of its own: the forwards the others run (each a collective under a sharded
    model) of a dummy row, and no update token."""
    device = next(model.parameters()).device
    batch = collate([([pad_id], [pad_id])], pad_id).to(device)
    f = [readout_forward(model, batch) for _ in range(1 + spec.needs_rejected)][-1]
    return ReadoutUpdate(
        f.logits[:0], f.hidden[:0], f.streams[:0], torch.zeros(0, dtype=torch.bool, device=device), 0.0
    )


def shared(update: ReadoutUpdate, world: int) -> ReadoutUpdate:
    """This process's share of an update whose loss is the mean of the processes' means: its G over `world`, and
    ‖G‖² of the whole update (summed over the processes)."""
    grad = update.grad / world
    norm = sum_over_ranks({"g_norm_sq": (grad.double() ** 2).sum()[None]}, grad.device)["g_norm_sq"]
    return ReadoutUpdate(grad, update.hidden, update.streams, update.negative, float(norm))


def token_logps(logits: torch.Tensor, scored: Scored) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, scored.targets[:, None]).squeeze(-1)


def readout_statistics(
    observed: ReadoutForward,
    update: ReadoutUpdate | None,
    head: torch.Tensor,
    lr: float,
    head_after: torch.Tensor | None = None,
    *,
    head_trained: bool = True,
) -> dict[str, torch.Tensor]:
    """Per observed sequence, the first-order Δ log π(y | x_o) of the update's SGD step, by part and side:
    "readout/head_<side>" (−η Σ ch1, exact), "readout/backbone_<side>" (−η Σ ch2, estimated), side "positive"
    (the y⁺ or SFT rows) or "negative" (y⁻; pair losses only); their sums per side as "sgd_positive" and
    "sgd_negative", and in all as "predicted" with its mass split ("predicted/mass_argmax", "_topk", "_tail").
    With `head_after` (W_{t+1}), also "readout/head_step": the real step's head term, which needs no update (and
    is all there is without one). `head`: W_t, (V, d). `head_trained=False` (a frozen head, as under LoRA): the
    head's terms are not part of the step and are left out. The observed tokens are taken a chunk at a time, so no
    (tokens × V) matrix is held whole. The slow, obviously correct twin of `projected_statistics`, which runs."""
    scored, device = observed.scored, observed.logits.device
    dtype = observed.hidden.dtype
    head = head.to(dtype)
    out: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        out[name] = out[name] + value if name in out else value

    sides = {}
    if update is not None:
        pulled = update.grad.to(dtype) @ head  # WᵀG_t, (L, d)
        for side in ("positive", "negative"):
            keep = update.negative if side == "negative" else ~update.negative
            if keep.any():
                sides[side] = (update.grad[keep].to(dtype), update.hidden[keep], update.streams[keep], pulled[keep])
    delta = None if head_after is None else (head_after.to(dtype) - head)
    for part in chunked(len(observed.logits), device):
        chunk = Scored(scored.targets[part], scored.rows[part], scored.columns[part], scored.n_rows)
        logits, total = observed.logits[part], None
        probs = logits.to(dtype).softmax(-1)
        for side, (grad, hidden, streams, back) in sides.items():
            both = -lr * (((observed.streams[part] @ streams.T) @ back) @ head.T)  # −η W Σ_t O_mt WᵀG_t
            add(f"readout/backbone_{side}", sequence_change(probs, chunk, both))
            if head_trained:
                head_dz = -lr * ((observed.hidden[part] @ hidden.T) @ grad)  # −η Σ_t ⟨h_m, h_t⟩ G_t
                add(f"readout/head_{side}", sequence_change(probs, chunk, head_dz))
                both = both + head_dz
            total = both if total is None else total + both
        if total is not None:
            for k, v in change_statistics(logits, chunk, dlogits=total).items():
                if k.startswith("mass"):
                    add(f"predicted/{k}", v)
        if delta is not None:
            add("readout/head_step", sequence_change(probs, chunk, observed.hidden[part] @ delta.T))
    for side in sides:
        out[f"sgd_{side}"] = out[f"readout/backbone_{side}"] + out.get(f"readout/head_{side}", 0.0)
    if sides:
        out["predicted"] = sum(out[f"sgd_{side}"] for side in sides)
    return out


def chunked(n: int, device) -> list[slice]:
    step = stat_chunk(device)
    return [slice(lo, lo + step) for lo in range(0, n, step)]


def sequence_change(probs: torch.Tensor, scored: Scored, dlogits: torch.Tensor) -> torch.Tensor:
    """A applied per token and summed per sequence: Σ_m [Δz_{m,y_m} − π_m·Δz_m], (n_rows,); `probs` = π per token
    (taken once per chunk for every part)."""
    per_token = dlogits.gather(-1, scored.targets[:, None]).squeeze(-1) - torch.linalg.vecdot(probs, dlogits)
    return torch.zeros(scored.n_rows, dtype=dlogits.dtype, device=dlogits.device).index_add(0, scored.rows, per_token)


# ------------------------------------------------------------------- one update: before the step, after it


@dataclass
class ReadoutStart:
    """What the readout keeps from before an update: the observed batches' forwards at θ_t, the update batch's side
    (None when the batch is not known: then only the real step's head term), the head W_t and η."""

    lr: float
    groups: list[tuple[list[ProbeItem], Batch | SharedRows, ReadoutForward]]
    update: ReadoutUpdate | None
    head: torch.Tensor  # W_t (V, d), cloned
    head_trained: bool  # the head takes part in the step (not under LoRA, or frozen)
    directions = None  # no parameter directions: what `Decomposer.awaiting_gradient` reads


@dataclass
class KeptForward:
    """The observed batches' forwards at θ_{t+1} (with their hidden states and streams), kept by `finish` for the
    next update's `begin`, with the parameters' identities and in-place versions when it was taken: any change of
    a parameter since (an optimizer step, a load) bumps its version, so a stale forward is never used."""

    groups: list[tuple[list[ProbeItem], Batch | SharedRows, ReadoutForward]]
    versions: list[tuple[int, int]]


def parameter_versions(model) -> list[tuple[int, int]]:
    """Each parameter's identity and in-place version counter: equal lists mean no parameter changed."""
    return [(id(p), p._version) for p in model.parameters()]


def output_head(model) -> torch.Tensor:
    return model.get_output_embeddings().weight


def begin(
    model,
    lr: float,
    items: list[ProbeItem],
    pad_id: int,
    *,
    loss: LossSpec | None = None,
    loss_cfg: LossConfig | None = None,
    examples=(),
    reference: PairLogps | None = None,
    batch_tokens: int = 1024,
    kept: KeptForward | None = None,
) -> ReadoutStart:
    """Before the optimizer step, at θ_t: the observed batches' forwards and, when the update's `examples` and
    `loss` are given, the update batch's (`readout_update`). No parameter is copied but the head. `kept`: the last
    update's observed forwards at what is still θ_t (`finish(..., keep=True)`), used instead of running them again
    when no parameter changed since and the batches are the same."""
    groups, examples, world = [], list(examples), rank_and_world()[1]
    batches = whole_prompt_batches(items, batch_tokens)
    if kept is not None and kept.versions == parameter_versions(model) and [g for g, *_ in kept.groups] == batches:
        groups = kept.groups
    with measurement_mode(model):
        for group in batches if not groups else []:  # every process: the same batches, in order
            rows = observed_rows(model, group, pad_id)
            groups.append((group, rows, forward_of(model, rows)))
        update = None
        if loss is not None and max_over_ranks(len(examples)):  # every process: its own share of the update
            update = (
                readout_update(model, loss, loss_cfg or LossConfig(), examples, pad_id, reference)
                if examples
                else idle_update(model, loss, pad_id)
            )
            update = update if world == 1 else shared(update, world)
    reshard(model)  # FSDP2: no forward's gathered copy outlives it, to be stale after the step
    head = output_head(model)
    return ReadoutStart(lr, groups, update, full_weight(head).detach().clone(), head.requires_grad)


def finish(model, start: ReadoutStart, predict: bool = True, keep: bool = False):
    """After the optimizer step: one row per observed (prompt, response type) with the observed change (a forward
    at θ_{t+1} of the same batches), its statistics, LBK and SignDelta, and, when `predict`, the readout's
    predictions (`readout_projected.projected_statistics`, the fast twin of `readout_statistics`; the head's
    terms left out when the head is not trained). Under several
    processes, every one takes part and gets the same rows (the update's terms summed over them). With `keep`
    (one process), returns (rows, `KeptForward`): the forward at θ_{t+1} taken with its hooks, for the next
    `begin`."""
    rows, keep = [], keep and rank_and_world()[1] == 1
    kept = KeptForward([], []) if keep else None
    head_after = full_weight(output_head(model)).detach()
    for group, observed, before in start.groups:
        with measurement_mode(model), torch.no_grad():
            if keep:
                forward = forward_of(model, observed)
                kept.groups.append((group, observed, forward))
                after = forward.logits
            else:
                after = scored_logits(model, observed)
        reshard(model)
        stats = change_statistics(before.logits, before.scored, after=after)
        out = {"observed": stats.pop("dlogp_target")} | {f"observed/{k}": v for k, v in stats.items()}
        out["observed/sign_delta"] = stats["dlogp_sum"] / (stats["n_tokens"].clamp(min=1) * after.shape[-1])
        if predict:
            stats = projected_statistics(
                before, start.update, start.head, start.lr, head_after, head_trained=start.head_trained
            )
            out |= across_ranks(stats, after.device)
        columns = {k: v.tolist() for k, v in out.items()}
        for i, item in enumerate(group):
            row = {"example_id": item.example_id, "type": item.type, "lr": start.lr, "method": "readout"}
            row |= {k: v[i] for k, v in columns.items()}
            if start.update is not None:  # LBK: ‖Δ log π‖² / (‖A‖_F² ‖G‖²)
                row["g_norm_sq"] = start.update.g_norm_sq
                if start.update.g_norm_sq > 0:  # a zero G (an SFT batch already fitted) moves nothing
                    row["observed/lbk"] = row["observed/dlogp_sq"] / (
                        row["observed/a_norm_sq"] * start.update.g_norm_sq
                    )
            rows.append(row)
    if kept is not None:
        kept.versions = parameter_versions(model)
        return rows, kept
    return rows


def across_ranks(stats: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Under several processes, each with its share of the update's tokens: the update's terms (sums over its
    tokens) summed over the processes; the real step's head term, every process's alike, as it is."""
    if rank_and_world()[1] == 1:
        return stats
    step = {k: v for k, v in stats.items() if k == "readout/head_step"}
    return sum_over_ranks({k: v for k, v in stats.items() if k not in step}, device) | step
