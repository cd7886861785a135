"""The one choice among the layouts: which one a forward of shared-prompt rows uses on this model and device."""

from __future__ import annotations

import torch

from ldyn.data.tokenize import Batch
from ldyn.logprobs.packed import packable, packed_scored_logits
from ldyn.logprobs.padded import response_logits
from ldyn.logprobs.shared_prompt import SharedRows, encode_prompts, shared_prompt_logits
from ldyn.logprobs.tokens import Scored


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


def rows_logits(model, rows: Batch | SharedRows, pad_id: int, params: dict | None = None):
    """(logits (N, V), `Scored`) of the scored tokens of a plain batch or of shared-prompt rows: packed
    (`packed.packed_scored_logits`: each prompt once, no padding, the logits as the forward gives them) when the
    model takes a packed row, else each prompt run once into a key/value cache the responses are scored against."""
    if isinstance(rows, Batch):
        return Scored.of_padded(*response_logits(model, rows, params))
    if packable(model):
        return packed_scored_logits(model, rows.prompts, rows.responses, params)
    encoded = encode_prompts(model, rows.prompts, pad_id, params)
    return Scored.of_padded(*shared_prompt_logits(model, encoded, rows.responses, pad_id, params))


def packs_training_rows(model, device: torch.device, processes: int) -> bool:
    """Whether a training forward packs its rows (`packed.packed_logps`: each prompt once, no padding) rather than
    running one padded batch (`padded.scored_logps`): on a CPU (`shares_prompts`), in one process (DDP expects one
    forward per backward) and for a model that takes a packed row. A trainer asks once."""
    return processes == 1 and shares_prompts(device) and packable(model)
