"""The padded layout: every row its prompt and response, padded to the batch's longest.

`response_logits` is the one function that knows the teacher-forcing shift and mask; `sequence_logps` sums it per
row, and `scored_logps` projects the vocabulary only where a response token is scored (the padded training
forward). Every other layout is tested against these."""

from __future__ import annotations

import torch

from ldyn.data.tokenize import IGNORE, Batch
from ldyn.logprobs.tokens import SeqLogps, logps_from_logits, rows_logps, run_model, supports_logits_to_keep


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
