"""Teacher-forced log-probabilities: the one function that knows the shift and the mask.

Training losses, probes and the decomposition all measure log π(y | x) = Σ_t log π(y_t | x, y_<t) through
`response_logits`, which runs the model and returns the logits that predict each response token, aligned with it.
Logits are only computed from the first scored position on (`logits_to_keep`), so prompt positions never pay for
the vocabulary projection.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ldyn.data.tokenize import IGNORE, Batch, collate

STAT_CHUNK = 1024  # response tokens per chunk when computing full-vocabulary statistics (bounds memory)


@dataclass
class SeqLogps:
    sum: torch.Tensor  # (B,) Σ_t log π(y_t | x, y_<t)
    mean: torch.Tensor  # (B,) sum / n_tokens
    n_tokens: torch.Tensor  # (B,) scored response tokens


def _supports_logits_to_keep(model) -> bool:
    fn = getattr(model, "forward", None)
    try:
        return "logits_to_keep" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def response_logits(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model; return (logits, labels), both cut so that logits[:, i] predicts labels[:, i].

    logits: (B, T', V) in the model's output dtype; labels: (B, T') with IGNORE where nothing is scored.
    T' starts at the first position (over the batch) whose next token is a response token.
    """
    scored = (batch.labels != IGNORE).any(0).nonzero()
    start = max(int(scored[0]) - 1, 0) if len(scored) else 0
    keep = batch.input_ids.shape[1] - start
    kwargs = {"logits_to_keep": keep} if _supports_logits_to_keep(model) else {}
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs).logits
    logits = logits[:, -keep:]
    return logits[:, :-1], batch.labels[:, start + 1:]


def shared_prompt_logits(model, prompts: list[list[int]], responses: list[tuple[int, list[int]]],
                         pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `response_logits`, but each prompt is run once and all its responses are scored against its KV cache.

    prompts: distinct prompts; responses: (index of its prompt, token ids). Returns (logits, labels) aligned as in
    `response_logits`: logits (N, L, V) with logits[:, i] predicting labels[:, i], labels IGNORE on padding.
    Prompts are right-padded, so no attention row is ever fully masked; response positions continue each prompt's
    own length. Equal to the plain computation up to float rounding (tested); `response_logits` is its slow twin.
    """
    device = next(model.parameters()).device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    prompt_ids = torch.full((len(prompts), int(lengths.max())), pad_id, device=device)
    prompt_mask = torch.zeros_like(prompt_ids)
    for i, p in enumerate(prompts):
        prompt_ids[i, : len(p)], prompt_mask[i, : len(p)] = torch.tensor(p), 1
    last = lengths - 1  # the position whose output predicts each response's first token
    keep = last.unique()  # (K,) sorted; a 1D `logits_to_keep` keeps these columns for every row
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True, logits_to_keep=keep)
    first = out.logits[torch.arange(len(prompts), device=device), torch.searchsorted(keep, last)]  # (P, V)

    rows = torch.tensor([i for i, _ in responses], device=device)
    cache = out.past_key_values
    cache.batch_select_indices(rows)  # one copy of its prompt's keys/values per response
    batch = collate([([], r) for _, r in responses], pad_id).to(device)  # response ids and labels only
    length = batch.input_ids.shape[1]
    positions = lengths[rows, None] + torch.arange(length, device=device)  # continue each prompt's positions
    mask = torch.cat([prompt_mask[rows], batch.attention_mask], dim=1)
    logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions,
                   past_key_values=cache, use_cache=True).logits  # (N, L, V): column j predicts token j + 1
    return torch.cat([first[rows, None], logits[:, :-1]], dim=1), batch.labels


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> SeqLogps:
    """(B, T, V) logits and aligned (B, T) labels -> per-sequence summed and mean log-probs."""
    mask = labels != IGNORE
    rows = logits[mask]
    rows = rows.to(torch.promote_types(rows.dtype, torch.float32))  # bf16 logits are scored in fp32
    token_logp = -F.cross_entropy(rows, labels[mask], reduction="none")  # (N,)
    seq = mask.nonzero()[:, 0]
    total = torch.zeros(labels.shape[0], dtype=token_logp.dtype, device=labels.device).index_add(0, seq, token_logp)
    n = mask.sum(1)
    return SeqLogps(total, total / n.clamp(min=1), n)


def sequence_logps(model, batch: Batch) -> SeqLogps:
    """Teacher-forced log π(response | prompt) for every row of the batch (differentiable)."""
    return logps_from_logits(*response_logits(model, batch))


STAT_NAMES = ("logp", "argmax_logp", "except_argmax_logp", "sq_norm", "pe", "entropy")


def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sequence sums over response tokens of full-distribution statistics, computed in float32 or wider.

    For each scored token with distribution π_t and label y_t:
      logp               log π_t(y_t)
      argmax_logp        log max_v π_t(v)                 (the teacher-forced argmax response y*)
      except_argmax_logp log(1 - max_v π_t(v))            (y^c; exact even when max π rounds to 1)
      sq_norm            ‖π_t‖²                            (‖A_t‖_F² = V - 2 + V ‖π_t‖²)
      pe                 ‖π_t - e_{y_t}‖₂                   (the size of the SFT residual G)
      entropy            H(π_t)
    All come from one pass over e = exp(z - max z) with the argmax entry set aside: with r = Σ_{v≠argmax} e_v,
    log max π = -log(1 + r) and log(1 - max π) = log r - log(1 + r), so nothing cancels catastrophically.
    Returns a dict of (B,) sums plus "n_tokens"; divide by n_tokens for per-token means.
    """
    mask = labels != IGNORE
    seq = mask.nonzero()[:, 0]
    rows, targets = logits[mask], labels[mask]  # (N, V), (N,)
    dtype = torch.promote_types(rows.dtype, torch.float32)
    out = {k: torch.zeros(labels.shape[0], dtype=dtype, device=labels.device) for k in STAT_NAMES}
    for lo in range(0, rows.shape[0], STAT_CHUNK):
        z, y, s = rows[lo:lo + STAT_CHUNK].to(dtype), targets[lo:lo + STAT_CHUNK], seq[lo:lo + STAT_CHUNK]
        top, top_idx = z.max(-1, keepdim=True)
        shifted = (z - top).clamp_(min=torch.finfo(dtype).min)  # z - max z <= 0, finite
        e = shifted.exp()
        e.scatter_(-1, top_idx, 0.0)  # the argmax term (exactly 1) is added back analytically
        r = e.sum(-1)  # Σ_{v≠argmax} e^{z_v - max z}
        log_total = torch.log1p(r)  # log Σ_v e^{z_v - max z} = logsumexp(z) - max z
        logp = shifted.gather(-1, y[:, None]).squeeze(-1) - log_total
        sq = (1 + torch.linalg.vecdot(e, e)) / (1 + r) ** 2
        p_y = logp.exp()
        stats = {
            "logp": logp,
            "argmax_logp": -log_total,
            "except_argmax_logp": torch.log(r) - log_total,
            "sq_norm": sq,
            "pe": (sq - 2 * p_y + 1).clamp(min=0).sqrt(),
            "entropy": log_total - torch.linalg.vecdot(e, shifted) / (1 + r),  # H = lse - Σ π z
        }
        for k, v in stats.items():
            out[k].index_add_(0, s, v)
    out["n_tokens"] = mask.sum(1)
    return out
