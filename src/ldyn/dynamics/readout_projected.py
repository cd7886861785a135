"""The readout's statistics without a vocabulary-sized logit change per part: `readout.readout_statistics`'s
fast twin, which gives the same numbers (to rounding) from projections onto the few directions they read.

Every statistic the readout reports is linear in a logit change Δz_m at an observed token m (first order):
A's row applied to the scored token, Δz_m[y_m] − π_m·Δz_m, and the mass split, π_v(Δz_m[v] − π_m·Δz_m) at the
argmax and the next TOP_K − 1 tokens (the tail is minus their sum: Σ_v π_v(Δz_v − π·Δz) = 0). Each part's Δz has
a low-rank form, so these need Δz only at a few tokens and its mean under π_m:

    backbone  Δz_m = C_m Wᵀ, C = −η (H̃_o H̃_uᵀ) (G W)     Δz_m[v] = C_m·W_v          π_m·Δz_m = C_m·(π_m W)
    head      Δz_m = Σ_t M_mt G_t, M = −η H_o H_uᵀ       Δz_m[v] = Σ_t M_mt G_t[v]  π_m·Δz_m = Σ_t M_mt (G_t·π_m)
    step      Δz_m = h_m ΔWᵀ                           Δz_m[v] = h_m·ΔW_v         π_m·Δz_m = h_m·(π_m ΔW)

so per chunk of observed tokens the vocabulary is crossed by three products shared by every part and side,
π W and π ΔW (tokens × V × d) and G πᵀ (update tokens × V × tokens), plus one softmax and one top-k, where the
twin forms every part's (tokens × V) change and runs its statistics over it. On SmolLM2 (V = 49,152) that is most
of the readout's vocabulary-sized work (`benchmarks/decompose_speed.py --variants readout`); the float64 test in
tests/test_readout.py holds the two to each other.
"""

from __future__ import annotations

import torch

from ldyn.dynamics.readout_capture import ReadoutForward
from ldyn.logprobs.tokens import TOP_K, stat_chunk


def projected_statistics(
    observed: ReadoutForward,
    update,
    head: torch.Tensor,
    lr: float,
    head_after: torch.Tensor | None = None,
    *,
    head_trained: bool = True,
) -> dict[str, torch.Tensor]:
    """`readout.readout_statistics` (same arguments, `update` a `readout.ReadoutUpdate` or None, same keys), by
    projections (the module docstring)."""
    scored, device, dtype = observed.scored, observed.logits.device, observed.hidden.dtype
    head = head.to(dtype)
    out: dict[str, torch.Tensor] = {}

    def add(name: str, per_token: torch.Tensor, rows: torch.Tensor) -> None:
        total = torch.zeros(scored.n_rows, dtype=per_token.dtype, device=device).index_add(0, rows, per_token)
        out[name] = out[name] + total if name in out else total

    sides = {}
    if update is not None:
        grad = update.grad.to(dtype)
        pulled = grad @ head  # WᵀG_t, (L, d)
        for side in ("positive", "negative"):
            keep = update.negative if side == "negative" else ~update.negative
            if keep.any():
                sides[side] = (keep, update.hidden[keep], update.streams[keep], pulled[keep])
    delta = None if head_after is None else (head_after.to(dtype) - head)
    step = stat_chunk(device)
    for lo in range(0, len(observed.logits), step):
        part = slice(lo, lo + step)
        rows, targets = scored.rows[part], scored.targets[part]
        probs = observed.logits[part].to(dtype).softmax(-1)
        top = probs.topk(TOP_K, dim=-1).indices  # (m, K): the argmax first
        read = torch.cat([targets[:, None], top], 1)  # the tokens whose Δz is read: y_m, then the top K
        p_top = probs.gather(-1, top)
        mean_w = probs @ head  # π_m W, (m, d)
        parts = []  # (name, Δz at `read` (m, K+1), π_m·Δz (m,)) of each part and side

        if sides:
            g_mean = grad @ probs.T  # G_t·π_m, (L, m)
            g_read = grad[:, read.flatten()].view(len(grad), *read.shape)  # G_t[v] at each m's tokens, (L, m, K+1)
        for side, (keep, hidden, streams, back) in sides.items():
            c = -lr * ((observed.streams[part] @ streams.T) @ back)  # (m, d)
            parts.append((f"readout/backbone_{side}", torch.einsum("md,mkd->mk", c, head[read]), (c * mean_w).sum(-1)))
            if head_trained:
                m = -lr * (observed.hidden[part] @ hidden.T)  # (m, L_side)
                at = torch.einsum("mt,tmk->mk", m, g_read[keep])
                parts.append((f"readout/head_{side}", at, (m * g_mean[keep].T).sum(-1)))
        for name, at, mean in parts:
            add(name, at[:, 0] - mean, rows)  # Δz_m[y_m] − π_m·Δz_m
        total_at = sum(at for _, at, _ in parts) if parts else None  # the whole predicted Δz, at `read`
        total_mean = sum(mean for _, _, mean in parts) if parts else None  # and under π_m
        if total_at is not None:
            shifted = total_at[:, 1:] - total_mean[:, None]  # Δz_v − π·Δz at the top K
            argmax = p_top[:, 0] * shifted[:, 0]
            topk = (p_top[:, 1:] * shifted[:, 1:]).sum(-1)
            add("predicted/mass_argmax", argmax, rows)
            add("predicted/mass_topk", topk, rows)
            add("predicted/mass_tail", -(argmax + topk), rows)
        if delta is not None:
            h = observed.hidden[part]
            at = (h * delta[targets]).sum(-1)
            add("readout/head_step", at - (h * (probs @ delta)).sum(-1), rows)
    for side in sides:
        out[f"sgd_{side}"] = out[f"readout/backbone_{side}"] + out.get(f"readout/head_{side}", 0.0)
    if sides:
        out["predicted"] = sum(out[f"sgd_{side}"] for side in sides)
    return out
