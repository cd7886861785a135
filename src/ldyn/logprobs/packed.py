"""Padding-free training passes: a batch's sequences packed into rows, each prompt once, logits only where scored.

The plain path pads a batch to its longest sequence and repeats a pair's prompt for each response. On HH batches
of 4 (SFT) that runs the model over 41% more tokens than the batch has. Packed, each prompt is written once and
followed by each of its responses; a response's positions continue from its prompt's length, and a 4-D attention
mask lets a response token see its prompt and the earlier tokens of its own response, nothing else (`pack`). The
logits are then projected only at the positions that predict a response token (`logits_to_keep`). No token is
padded and no prompt runs twice.

The mask is dense, so attention over a packed row costs its length squared: the prompts are split into passes
that balance that against each pass's fixed cost (`plan_passes`), all passes embedded by one lookup. The plain
`sequence_logps` of `collate_pairs` is the slow twin (the same loss and gradients, tested in float64).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ldyn.logprobs.tokens import Scored, SeqLogps, embed_once, rows_logps, run_model, supports_logits_to_keep

# A pass's fixed cost in tokens (launching every layer's kernels, the per-pass bookkeeping): the price the training
# path's length groups put on a pass before packing (paired on SmolLM2's DPO updates: 2 passes beat 1 and 3).
PASS_OVERHEAD = 64


@dataclass
class PackedPass:
    """One packed row: several prompts, each followed by its responses."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T): a prompt from 0, each of its responses from the prompt's length
    visible: torch.Tensor  # (1, 1, T, T) bool: query position t may attend to key position s
    keep: torch.Tensor  # (N,) the positions whose logits predict a response token
    targets: torch.Tensor  # (N,) the tokens they predict
    rows: torch.Tensor  # (N,) which response each belongs to (an index into `responses`)
    columns: torch.Tensor  # (N,) its place in that response


def packable(model) -> bool:
    """Whether the model takes a packed row: a custom 4-D attention mask (sdpa or eager attention, which transformers
    pass such a mask to as it is) and explicit position ids."""
    config = getattr(model, "config", None)
    forward = getattr(getattr(model, "_orig_mod", model), "forward", None)
    try:
        takes_positions = "position_ids" in inspect.signature(forward).parameters or _takes_kwargs(forward)
    except (TypeError, ValueError):
        return False
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager") and takes_positions


def _takes_kwargs(fn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def attention_cost(model) -> float:
    """κ: the dense attention of a packed row of T tokens costs κ·T² tokens' worth of the rest of a forward pass.

    Per layer and query-key pair attention does 4·d_attn FLOPs (scores and values), the weights 2 per parameter
    per token; so κ = 2·d_attn·layers / N_body, N_body the parameters other than the embeddings."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
    embeddings = {
        id(m.weight): m.weight.numel()
        for m in (model.get_input_embeddings(), model.get_output_embeddings())
        if m is not None
    }
    body = sum(p.numel() for p in model.parameters()) - sum(embeddings.values())
    return 2 * width * config.num_hidden_layers / max(body, 1)


def plan_passes(sizes: list[int], kappa: float, overhead: int | None = None) -> list[list[int]]:
    """Units of `sizes` tokens (a prompt with its responses) split into passes minimising Σ_passes (κ·T² + overhead),
    T a pass's tokens: for each number of passes the units are dealt largest first to the emptiest pass, and the
    cheapest number wins (fewer on a tie). Each pass lists its units in their original order."""
    overhead = PASS_OVERHEAD if overhead is None else overhead
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    best, plan = float("inf"), [list(range(len(sizes)))]
    for k in range(1, len(sizes) + 1):
        bins, loads = [[] for _ in range(k)], [0] * k
        for i in order:
            j = loads.index(min(loads))
            bins[j].append(i)
            loads[j] += sizes[i]
        cost = sum(kappa * t * t + overhead for t in loads)
        if cost < best:
            best, plan = cost, [sorted(b) for b in bins]
    return plan


def pack(prompts: list[list[int]], responses: list[tuple[int, list[int]]], units: list[int]) -> PackedPass:
    """The row of the prompts numbered `units`, each followed by its responses (`responses`: (prompt index, ids))."""
    ids, positions, tree, branch, keep, targets, rows, columns = [], [], [], [], [], [], [], []
    for unit in units:
        prompt = prompts[unit]
        last = len(ids) + len(prompt) - 1  # its output predicts each response's first token
        ids += prompt
        positions += range(len(prompt))
        tree += [unit] * len(prompt)
        branch += [-1] * len(prompt)
        for row, (owner, response) in enumerate(responses):
            if owner != unit or not response:
                continue
            start = len(ids)
            keep += [last] + list(range(start, start + len(response) - 1))
            targets += response
            rows += [row] * len(response)
            columns += range(len(response))
            ids += response
            positions += range(len(prompt), len(prompt) + len(response))
            tree += [unit] * len(response)
            branch += [row] * len(response)
    tree_t, branch_t = torch.tensor(tree), torch.tensor(branch)
    order = torch.arange(len(ids))
    same_branch = branch_t[:, None] == branch_t[None, :]
    visible = (tree_t[:, None] == tree_t[None, :]) & ((branch_t[None, :] == -1) | same_branch)
    visible &= order[:, None] >= order[None, :]
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731 (an empty list is a long tensor too)
    return PackedPass(
        as_long([ids]),
        as_long([positions]),
        visible[None, None],
        as_long(keep),
        as_long(targets),
        as_long(rows),
        as_long(columns),
    )


def packed_passes(model, prompts: list[list[int]], responses: list[tuple[int, list[int]]]) -> list[PackedPass]:
    """The planned passes of prompts with their responses (prompts without a response are left out)."""
    sizes = [0] * len(prompts)
    for owner, response in responses:
        sizes[owner] += len(response)
    units = [i for i, s in enumerate(sizes) if s]
    plan = plan_passes([len(prompts[i]) + sizes[i] for i in units], attention_cost(model))
    return [pack(prompts, responses, [units[i] for i in group]) for group in plan]


def attention_mask(model, visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A packed row's 4-D mask as the model's attention takes it: sdpa the booleans, eager attention a float mask
    added to its scores."""
    if model.config._attn_implementation != "eager":
        return visible
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, torch.finfo(dtype).min)


def packed_logits(model, passes: list[PackedPass], params: dict | None = None) -> list[torch.Tensor]:
    """(N, V) logits of each pass at its kept positions (differentiable). With the model's own parameters every
    pass's tokens are embedded by one lookup (`embed_once`: one dense embedding gradient, not one per pass); with
    `params` (name -> tensor, `torch.func.functional_call`) the model runs with those instead, as forward-mode and
    the finite differences of the decomposition run it."""
    device = next(model.parameters()).device
    if params is None:
        inputs = [{"inputs_embeds": e} for e in embed_once(model, [p.input_ids.to(device) for p in passes])]
    else:
        inputs = [{"input_ids": p.input_ids.to(device)} for p in passes]
    dtype = next(iter(params.values())).dtype if params else next(model.parameters()).dtype
    out = []
    for p, kwargs in zip(passes, inputs):
        mask = attention_mask(model, p.visible.to(device), dtype)
        keep = p.keep.to(device)
        kwargs |= {"attention_mask": mask, "position_ids": p.position_ids.to(device), "use_cache": False}
        if supports_logits_to_keep(model):
            out.append(run_model(model, params, **kwargs, logits_to_keep=keep).logits[0])
        else:
            out.append(run_model(model, params, **kwargs).logits[0, keep])
    return out


def packed_scored_logits(
    model, prompts: list[list[int]], responses: list[tuple[int, list[int]]], params: dict | None = None
) -> tuple[torch.Tensor, Scored]:
    """(logits (N, V), `Scored`) of the scored tokens of (prompt index, response) rows from packed passes, pass by
    pass. The instruments' forward of shared-prompt rows; `shared_prompt_logits` is its twin (tested)."""
    passes = packed_passes(model, prompts, responses)
    device = next(model.parameters()).device
    if not passes:  # no response has a token
        empty = torch.zeros(0, dtype=torch.long, device=device)
        vocab = model.get_output_embeddings().weight.shape[0]
        return torch.zeros(0, vocab, device=device), Scored(empty, empty, empty, len(responses))
    logits = packed_logits(model, passes, params)
    logits = logits[0] if len(logits) == 1 else torch.cat(logits)
    targets, rows, columns = (
        torch.cat([getattr(p, k) for p in passes]).to(device) for k in ("targets", "rows", "columns")
    )
    return logits, Scored(targets, rows, columns, len(responses))


def passes_logps(passes: list[PackedPass], logits: list[torch.Tensor], n_rows: int) -> SeqLogps:
    """Per-row log-probs from the passes' logits (`packed_logits`)."""
    if not passes:  # no response has a token
        empty = torch.zeros(0, dtype=torch.long)
        return rows_logps(torch.zeros(0, 1), empty, empty, n_rows)
    device = logits[0].device
    targets, rows = (torch.cat([getattr(p, k) for p in passes]).to(device) for k in ("targets", "rows"))
    return rows_logps(torch.cat(logits), targets, rows, n_rows)


def packed_logps(model, prompts: list[list[int]], responses: list[tuple[int, list[int]]]) -> SeqLogps:
    """`sequence_logps` of (prompt index, response) rows, packed: each prompt once, no padding (differentiable)."""
    passes = packed_passes(model, prompts, responses)
    return passes_logps(passes, packed_logits(model, passes), len(responses))
