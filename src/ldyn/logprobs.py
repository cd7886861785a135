"""Teacher-forced log-probabilities: the one function that knows the shift and the mask.

Probes and the decomposition measure log π(y | x) = Σ_t log π(y_t | x, y_<t) through `response_logits`, which runs
the model and returns the logits that predict each response token, aligned with it; logits are only computed from
the first scored position on (`logits_to_keep`), so prompt positions never pay for the vocabulary projection. A
training forward needs only the scored positions' log-probs: `scored_logps` projects there alone (and
`packing.packed_logps`, a CPU's training path, packs the rows without padding).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ldyn.data.tokenize import IGNORE, Batch, collate

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


def first_scored(batch: Batch) -> int:
    """The first position (over the batch) whose output predicts a response token."""
    scored = (batch.labels != IGNORE).any(0).nonzero()
    return max(int(scored[0]) - 1, 0) if len(scored) else 0


def aligned_labels(batch: Batch) -> torch.Tensor:
    """The labels `response_logits` returns, without running the model."""
    return batch.labels[:, first_scored(batch) + 1 :]


def response_logits(model, batch: Batch, params: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model; return (logits, labels), both cut so that logits[:, i] predicts labels[:, i].

    logits: (B, T', V) in the model's output dtype; labels: (B, T') with IGNORE where nothing is scored.
    T' starts at the first position (over the batch) whose next token is a response token. With `params`
    (name -> tensor), the model runs with those parameters instead of its own (`torch.func.functional_call`),
    which is how the decomposition differentiates through it in forward mode.
    """
    start = first_scored(batch)
    keep = batch.input_ids.shape[1] - start
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if supports_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = run_model(model, params, **kwargs).logits[:, -keep:]
    return logits[:, :-1], aligned_labels(batch)


def run_model(model, params: dict | None, **kwargs):
    """The model's forward pass, with its own parameters or with `params` (name -> tensor)."""
    return model(**kwargs) if params is None else torch.func.functional_call(model, params, args=(), kwargs=kwargs)


def shares_prompts(device: torch.device) -> bool:
    """Whether to run each prompt once for all its responses (the shared-prompt paths) on this device by default.

    Sharing saves tokens but costs passes: probes run the prompts, then the responses against their key/value
    cache; training packs each prompt with its responses into rows without padding (`packing`). On a CPU the work
    is compute-bound and fewer tokens win (SmolLM2, 2 cores: a DPO update of 4 HH pairs 14.4 -> 7.7 s shared,
    ~5.5 s packed; probing 2.8x faster). On a GPU a model of this size is bound by kernel launches, and every extra
    pass costs more than the tokens it saves (H100: the same DPO update 0.40 s shared; probing 3.1 s shared against
    1.9 s plain), so the plain single pass is the default there.
    """
    return torch.device(device).type == "cpu"


@dataclass
class PromptCache:
    """A batch of prompts, all but their last token, run once: the key/value cache responses are scored against."""

    cache: object | None  # the model's KV cache of the right-padded prompts without their last token
    mask: torch.Tensor  # (P, longest prompt - 1) attention mask of the cached tokens
    prompts: list[list[int]]  # the prompts' token ids


def encode_prompts(model, prompts: list[list[int]], pad_id: int, params: dict | None = None) -> PromptCache:
    """Run every prompt but its last token once (right-padded, so no attention row is ever fully masked).

    The last prompt token is fed with the responses instead, so that the logits predicting each response's
    first token come out of the same forward pass as the rest, already aligned.
    """
    ids, mask = _prompt_ids(prompts, pad_id, next(model.parameters()).device)
    if ids.shape[1] == 0:
        return PromptCache(None, mask, prompts)
    out = run_model(model, params, input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    return PromptCache(out.cache, mask, prompts)


def _prompt_ids(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of every prompt but its last token, right-padded."""
    width = max(len(p) for p in prompts) - 1
    ids = torch.full((len(prompts), width), pad_id, device=device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, : len(p) - 1], mask[i, : len(p) - 1] = torch.tensor(p[:-1]), 1
    return ids, mask


def _response_batch(prompts: list[list[int]], responses: list[tuple[int, list[int]]], pad_id: int) -> Batch:
    """Each row: its prompt's last token, then the response; labels cover the response only."""
    return collate([(prompts[i][-1:], r) for i, r in responses], pad_id)


def embed_once(model, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """The input embeddings of several id tensors from one lookup. Its backward is then one dense embedding
    gradient instead of one per forward pass: for SmolLM2 a zero-filled 113 MB tensor (tied with the LM head) and
    an accumulation each, ~0.2 s apiece on a CPU."""
    flat = model.get_input_embeddings()(torch.cat([t.reshape(-1) for t in ids]))
    return [part.reshape(*t.shape, -1) for part, t in zip(flat.split([t.numel() for t in ids]), ids)]


def shared_prompt_logits(
    model, prompts: PromptCache, responses: list[tuple[int, list[int]]], pad_id: int, params: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `response_logits`, but scoring responses against already encoded prompts.

    responses: (index of its prompt in `prompts`, token ids). Returns (logits, labels) aligned as in
    `response_logits`: logits (N, L, V) with logits[:, i] predicting labels[:, i], labels IGNORE on padding.
    Positions continue each prompt's own length. Equal to the plain computation up to float rounding (tested);
    `response_logits` on full sequences is its slow twin.
    """
    device = prompts.mask.device
    rows = torch.tensor([i for i, _ in responses], device=device)
    batch = _response_batch(prompts.prompts, responses, pad_id).to(device)
    starts = torch.tensor([len(prompts.prompts[i]) - 1 for i, _ in responses], device=device)
    positions = starts[:, None] + torch.arange(batch.input_ids.shape[1], device=device)
    cache = None if prompts.cache is None else _cache_rows(prompts.cache, rows)
    mask = torch.cat([prompts.mask[rows], batch.attention_mask], dim=1)
    logits = run_model(
        model,
        params,
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=cache is not None,
    ).logits
    return logits[:, :-1], batch.labels[:, 1:]


@dataclass
class SharedRows:
    """Responses to a few prompts, to be scored with each prompt run once (`shared_prompt_logits`)."""

    prompts: list[list[int]]  # token ids
    responses: list[tuple[int, list[int]]]  # (index into prompts, response token ids)

    @classmethod
    def of(cls, pairs: list[tuple[str, list[int], list[int]]]) -> SharedRows:
        """From (prompt key, prompt ids, response ids) triples, in order; equal keys share one prompt."""
        index: dict[str, int] = {}
        prompts = []
        for key, prompt, _ in pairs:
            if key not in index:
                index[key] = len(prompts)
                prompts.append(prompt)
        return cls(prompts, [(index[key], response) for key, _, response in pairs])


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


def rows_logits(model, rows: Batch | SharedRows, pad_id: int, params: dict | None = None):
    """(logits (N, V), `Scored`) of the scored tokens of a plain batch or of shared-prompt rows: packed
    (`packing.packed_scored_logits`: each prompt once, no padding, the logits as the forward gives them) when the
    model takes a packed row, else each prompt run once into a key/value cache the responses are scored against."""
    from ldyn.packing import packable, packed_scored_logits  # packing builds on this module

    if isinstance(rows, Batch):
        return Scored.of_padded(*response_logits(model, rows, params))
    if packable(model):
        return packed_scored_logits(model, rows.prompts, rows.responses, params)
    encoded = encode_prompts(model, rows.prompts, pad_id, params)
    return Scored.of_padded(*shared_prompt_logits(model, encoded, rows.responses, pad_id, params))


def _cache_rows(cache, rows: torch.Tensor):
    """A new cache with one copy of its prompt's keys/values per response; `cache` itself is left as it was (it
    serves further batches), and gradients flow back through the selection to the prompt's forward pass."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows)
    return out


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


def sequence_logps(model, batch: Batch) -> SeqLogps:
    """Teacher-forced log π(response | prompt) for every row of the batch (differentiable)."""
    return logps_from_logits(*response_logits(model, batch))


def scored_logps(model, batch: Batch) -> SeqLogps:
    """`sequence_logps` with the vocabulary projected only where a response token is scored: `logits_to_keep` as a
    (B, T) mask (transformers slices the hidden states before the output layer), so the logits are (N, V) for the N
    scored tokens instead of (B, T', V) over every padded and prompt position from the first scored one on. The
    training forward of a padded batch; `sequence_logps` is its slow twin (tested)."""
    if not supports_logits_to_keep(model):
        return sequence_logps(model, batch)
    scored = torch.zeros_like(batch.labels, dtype=torch.bool)
    scored[:, :-1] = batch.labels[:, 1:] != IGNORE
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=scored).logits
    return rows_logps(logits, batch.labels[:, 1:][scored[:, :-1]], scored.nonzero()[:, 0], batch.labels.shape[0])


def rows_logps(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> SeqLogps:
    """Per-row sums of log π(target) from (N, V) logits of scored tokens, `rows` naming each token's row (bf16
    logits are scored in fp32)."""
    scored = logits.to(torch.promote_types(logits.dtype, torch.float32))
    token_logp = -F.cross_entropy(scored, targets, reduction="none")
    total = torch.zeros(n_rows, dtype=token_logp.dtype, device=token_logp.device).index_add(0, rows, token_logp)
    n = torch.bincount(rows, minlength=n_rows)
    return SeqLogps(total, total / n.clamp(min=1), n, logits, rows)


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
        }
        for k, v in stats.items():
            out[k].index_add_(0, s, v)
    out["n_tokens"] = mask.sum(1)
    return out
