"""What every row layout shares: log π of scored tokens from their logits, and the full-distribution statistics.

A layout (`padded`, `shared_prompt`, `packed`) runs the model and hands back the logits of the tokens it scores;
this module turns them into per-row sums (`rows_logps`, `logps_from_logits` -> `SeqLogps`), records what each
logits row stands for (`Scored`), and computes the probes' statistics over the whole vocabulary
(`token_statistics`: log π, the argmax, ‖π‖² for ‖A‖_F, the residual's size, the entropy).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ldyn.data.tokenize import IGNORE

STAT_CHUNK = 32  # response tokens per chunk of the full-vocabulary statistics on a CPU: a chunk's rows stay in cache


def stat_chunk(device: torch.device) -> int:
    """Response tokens per chunk of the full-vocabulary statistics: `STAT_CHUNK` on a CPU; on a GPU every chunk is a
    dozen kernel launches, so a chunk is 64× larger (2,048 rows of SmolLM2's vocabulary are 0.4 GB in fp32)."""
    return STAT_CHUNK if device.type == "cpu" else 64 * STAT_CHUNK


@dataclass
class SeqLogps:
    sum: torch.Tensor  # (B,) Σ_t log π(y_t | x, y_<t)
    mean: torch.Tensor  # (B,) sum / n_tokens
    n_tokens: torch.Tensor  # (B,) scored response tokens
    # what the sums were taken from, as the forward gave it (still attached to its graph when it has one): an
    # instrument differentiates the training step's own graph from these (`UpdateDirections.from_step`)
    logits: torch.Tensor | None = None  # (N, V) the scored tokens' logits
    rows: torch.Tensor | None = None  # (N,) the row each belongs to


def supports_logits_to_keep(model) -> bool:
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: its original
    if hasattr(model, "get_base_model"):  # a PEFT model passes its keyword arguments on to the base model
        model = model.get_base_model()
    fn = getattr(model, "forward", None)
    try:
        return "logits_to_keep" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def run_model(model, params: dict | None, **kwargs):
    """The model's forward pass, with its own parameters or with `params` (name -> tensor)."""
    return model(**kwargs) if params is None else torch.func.functional_call(model, params, args=(), kwargs=kwargs)


def embed_once(model, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """The input embeddings of several id tensors from one lookup. Its backward is then one dense embedding
    gradient instead of one per forward pass: for SmolLM2 a zero-filled 113 MB tensor (tied with the LM head) and
    an accumulation each, ~0.2 s apiece on a CPU."""
    flat = model.get_input_embeddings()(torch.cat([t.reshape(-1) for t in ids]))
    return [part.reshape(*t.shape, -1) for part, t in zip(flat.split([t.numel() for t in ids]), ids)]


@dataclass
class Scored:
    """What each row of a scored-token logits tensor (N, V) stands for: the token it predicts, the sequence it
    belongs to and its place in that sequence's response. The decomposition's layout: the packed forward gives it
    as it is (no padding, nothing copied), and per-sequence sums are one `index_add` over `rows`."""

    targets: torch.Tensor  # (N,)
    rows: torch.Tensor  # (N,) the sequence each token belongs to, of n_rows
    columns: torch.Tensor  # (N,) its place in that sequence's response
    n_rows: int

    @classmethod
    def of_padded(cls, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Scored]:
        """The scored tokens of the padded layout (`response_logits`: (B, L, V) with aligned labels), sequence by
        sequence: one copy of their logits."""
        mask = labels != IGNORE
        rows, columns = mask.nonzero(as_tuple=True)
        return logits[mask], cls(labels[mask], rows, columns, labels.shape[0])

    @property
    def n_tokens(self) -> torch.Tensor:
        return torch.bincount(self.rows, minlength=self.n_rows)

    def sequence_order(self) -> torch.Tensor:
        """The permutation putting the tokens in the padded layout's order (by sequence, then place), in which
        two layouts of the same rows compare."""
        width = int(self.columns.max()) + 1 if self.columns.numel() else 1
        return (self.rows * width + self.columns).argsort()


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> SeqLogps:
    """(B, T, V) logits and aligned (B, T) labels -> per-sequence summed and mean log-probs."""
    mask = labels != IGNORE
    scored = logits[mask]
    rows = scored.to(torch.promote_types(scored.dtype, torch.float32))  # bf16 logits are scored in fp32
    token_logp = -F.cross_entropy(rows, labels[mask], reduction="none")  # (N,)
    seq = mask.nonzero()[:, 0]
    total = torch.zeros(labels.shape[0], dtype=token_logp.dtype, device=labels.device).index_add(0, seq, token_logp)
    n = mask.sum(1)
    return SeqLogps(total, total / n.clamp(min=1), n, scored, seq)


def rows_logps(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> SeqLogps:
    """Per-row sums of log π(target) from (N, V) logits of scored tokens, `rows` naming each token's row (bf16
    logits are scored in fp32)."""
    scored = logits.to(torch.promote_types(logits.dtype, torch.float32))
    token_logp = -F.cross_entropy(scored, targets, reduction="none")
    total = torch.zeros(n_rows, dtype=token_logp.dtype, device=token_logp.device).index_add(0, rows, token_logp)
    n = torch.bincount(rows, minlength=n_rows)
    return SeqLogps(total, total / n.clamp(min=1), n, logits, rows)


STAT_NAMES = ("logp", "argmax_logp", "except_argmax_logp", "sq_norm", "pe", "entropy", "topk_mass", "topk_entropy")
TOP_K = 10  # the k of the top-k statistics: the candidates a sampler keeps at the common top_k=10


def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sequence sums over response tokens of full-distribution statistics, computed in float32 or wider.

    For each scored token with distribution π_t and label y_t:
      logp               log π_t(y_t)
      argmax_logp        log max_v π_t(v)                 (the teacher-forced argmax response y*)
      except_argmax_logp log(1 - max_v π_t(v))            (y^c; exact even when max π rounds to 1)
      sq_norm            ‖π_t‖²                            (‖A_t‖_F² = V - 2 + V ‖π_t‖²)
      pe                 ‖π_t - e_{y_t}‖₂                   (the size of the SFT residual G)
      entropy            H(π_t)
      topk_mass          Σ of the TOP_K largest π_t(v)     (Shi et al. 2024, arXiv 2410.11677: top-k probability mass)
      topk_entropy       H of π_t restricted to its TOP_K largest entries and renormalised (their top-k entropy)
    All come from one pass over e = exp(z - max z) with the argmax entry set aside: with r = Σ_{v≠argmax} e_v,
    log max π = -log(1 + r) and log(1 - max π) = log r - log(1 + r), so nothing cancels catastrophically.
    Returns a dict of (B,) sums plus "n_tokens"; divide by n_tokens for per-token means.
    """
    mask = labels != IGNORE
    seq, pos = mask.nonzero(as_tuple=True)
    targets = labels[mask]  # (N,)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = {k: torch.zeros(labels.shape[0], dtype=dtype, device=labels.device) for k in STAT_NAMES}
    chunk = stat_chunk(logits.device)
    for lo in range(0, targets.shape[0], chunk):  # rows gathered chunk by chunk: (N, V) is never copied whole
        s, y = seq[lo : lo + chunk], targets[lo : lo + chunk]
        z = logits[s, pos[lo : lo + chunk]].to(dtype)
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
            **top_k_statistics(shifted, log_total),
        }
        for k, v in stats.items():
            out[k].index_add_(0, s, v)
    out["n_tokens"] = mask.sum(1)
    return out


def top_k_statistics(shifted: torch.Tensor, log_total: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row of `shifted` = z - max z (N, V), with log_total = log Σ_v e^{shifted_v}: the mass of the TOP_K
    largest probabilities and the entropy of the distribution renormalised over them."""
    top = shifted.topk(min(TOP_K, shifted.shape[-1]), dim=-1).values  # (N, k), the largest first
    log_top = torch.logsumexp(top, -1)  # log Σ_top e^{z - max z}
    q = (top - log_top[:, None]).exp()  # π over the top-k, renormalised
    return {"topk_mass": (log_top - log_total).exp(), "topk_entropy": log_top - (q * top).sum(-1)}
